// The native data path (issue 17): data blocks of an introspected image served
// with pread/pwrite on the libfuse threads, through a real mount with O_DIRECT
// (every request reaches the daemon). Checked: the bytes against a shadow and
// the counters; 8 parallel O_DIRECT writers of one image; a reclassification
// storm (an inode of the guest turned into a directory over a range of another
// file's data blocks and back, again and again, while writers and readers work
// on that range natively); destage, e2fsck and a remount after each; and
// VMDI_DATA_NATIVE=off, which leaves every data block to JavaScript.
import { ChildProcess, execFileSync, spawn } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ImageStats } from '../../src/control/protocol'
import { destage, imageStats, liveMap, status, waitForImage } from '../helpers/control'
import { ranges } from '../helpers/e2oracle'
import { mount, tmpdir, waitFor, type Mounted } from '../helpers/mount'
import { rng } from '../helpers/rng'

const B = 4096
let base = ''
let pristine = ''
/** The big file's fs blocks (4 KiB: file blocks of the raw image), in file order. */
let bigBlocks: number[] = []
/** The victim inode's place in the image: byte offset of its 256 bytes. */
let victimAt = 0

beforeAll(() => {
  base = tmpdir('vmdi-native-data-')
  const tree = path.join(base, 'tree')
  fs.mkdirSync(tree)
  fs.writeFileSync(path.join(tree, 'big'), crypto.randomBytes(24 << 20))
  for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(tree, `small${i}`), crypto.randomBytes(3000 + i * 500))
  pristine = path.join(base, 'pristine.img')
  // No metadata_csum: the storm writes inodes by hand.
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-I', '256', '-O', '^metadata_csum', '-d', tree, pristine, '64M'])
  const blocks = execFileSync('debugfs', ['-R', 'blocks /big', pristine], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
  bigBlocks = blocks.trim().split(/\s+/).map(Number)
  const imap = execFileSync('debugfs', ['-R', 'imap /small7', pristine], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
  const m = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(imap)!
  victimAt = Number(m[1]) * B + parseInt(m[2], 16)
})
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

function freshStore(name: string): { store: string; img: string } {
  const store = path.join(base, name)
  fs.mkdirSync(store)
  const img = path.join(store, 'vm.img')
  fs.copyFileSync(pristine, img)
  return { store, img }
}

async function nativeOn(m: Mounted): Promise<ImageStats> {
  return waitForImage(m.mnt, (im) => im.scan.state === 'done' && im.nativeTableBytes !== null, { image: 'vm.img', ms: 60_000, what: 'the native table of vm.img' })
}

function e2fsckClean(img: string): void {
  const r = spawnE2fsck(img)
  if (r.status !== 0) throw new Error(`e2fsck -fn ${img} exited ${r.status}:\n${r.out}`)
}

function spawnE2fsck(img: string): { status: number; out: string } {
  try {
    return { status: 0, out: execFileSync('e2fsck', ['-fn', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }) }
  } catch (e) {
    const x = e as { status: number; stdout: string; stderr: string }
    return { status: x.status, out: `${x.stdout}${x.stderr}` }
  }
}

/** A contiguous run of the big file's blocks: [first fs block, count]. */
function bigRun(minBlocks: number): [number, number] {
  let start = 0
  for (let i = 1; i <= bigBlocks.length; i++) {
    if (i < bigBlocks.length && bigBlocks[i] === bigBlocks[i - 1] + 1) continue
    if (i - start >= minBlocks) return [bigBlocks[start], i - start]
    start = i
  }
  throw new Error(`no run of ${minBlocks} blocks in /big`)
}

describe('the native data path', () => {
  for (const mode of ['on', 'off'] as const) {
    it(`random reads and writes of data blocks agree with a shadow; destage leaves the same bytes and a clean file system (VMDI_DATA_NATIVE=${mode})`, async () => {
      const { store, img } = freshStore(`store-rw-${mode}`)
      let shadow = fs.readFileSync(img)
      const m = await mount(store, path.join(base, `mnt-rw-${mode}`), ['--ram-cache', '1M'], mode === 'off' ? { VMDI_DATA_NATIVE: 'off' } : {})
      try {
        const fd = fs.openSync(path.join(m.mnt, 'vm.img'), fs.constants.O_RDWR | fs.constants.O_DIRECT)
        try {
          if (mode === 'on') await nativeOn(m)
          else await waitForImage(m.mnt, (im) => im.scan.state === 'done' && im.scan.warm, { image: 'vm.img', ms: 60_000 })
          const r = rng(17)
          for (let i = 0; i < 2000; i++) {
            const blk = bigBlocks[Math.floor(r() * bigBlocks.length)]
            const pos = blk * B + (r() < 0.2 ? Math.floor(r() * B) : 0)
            const len = r() < 0.3 ? 1 + Math.floor(r() * 3 * B) : B * (1 + Math.floor(r() * 8))
            if (r() < 0.5) {
              const got = Buffer.alloc(len)
              const n = fs.readSync(fd, got, 0, len, pos)
              const want = shadow.subarray(pos, pos + len)
              expect(n).toBe(want.length)
              if (!got.subarray(0, n).equals(want)) throw new Error(`op ${i}: read ${pos}+${len} differs from the shadow`)
            } else {
              const data = crypto.randomBytes(len)
              expect(fs.writeSync(fd, data, 0, len, pos)).toBe(len)
              data.copy(shadow, pos)
            }
          }
          // Everything, read back through the mount.
          const all = Buffer.alloc(shadow.length)
          for (let at = 0; at < all.length; at += 1 << 20) fs.readSync(fd, all, at, Math.min(1 << 20, all.length - at), at)
          expect(all.equals(shadow)).toBe(true)
          const im = imageStats(m.mnt, 'vm.img')!
          if (mode === 'on') {
            expect(im.nativeReads).toBeGreaterThan(100)
            expect(im.nativeWrites).toBeGreaterThan(100)
            expect(status(m.mnt).ops.read ?? 0).toBeGreaterThanOrEqual(0)
          } else {
            expect(im.nativeTableBytes).toBeNull()
            expect(im.nativeReads + im.nativeWrites).toBe(0)
          }
        } finally {
          fs.closeSync(fd)
        }
        destage(m.mnt)
      } finally {
        expect(await m.stop()).toBe(0)
      }
      shadow = Buffer.from(shadow)
      expect(fs.readFileSync(img).equals(shadow)).toBe(true)
      e2fsckClean(img)
    })
  }

  it('8 parallel O_DIRECT writers of one image: every byte lands, and writes are in flight together', async () => {
    const { store, img } = freshStore('store-par')
    const m = await mount(store, path.join(base, 'mnt-par'), ['--ram-cache', '1M'])
    const [first, count] = bigRun(8 * 64)
    const per = Math.floor(count / 8)
    try {
      const fd = fs.openSync(path.join(m.mnt, 'vm.img'), fs.constants.O_RDWR | fs.constants.O_DIRECT)
      fs.closeSync(fd)
      await nativeOn(m)
      const before = status(m.mnt).direct.writesTogetherMax
      // fio: 8 jobs, each its own slice of the run, 64 KiB writes with a checksum header, then verified.
      execFileSync('fio', [
        '--name=par', `--filename=${path.join(m.mnt, 'vm.img')}`, '--rw=randwrite', '--bs=64k', '--direct=1', '--ioengine=psync',
        '--numjobs=8', `--offset=${first * B}`, `--size=${per * B}`, `--offset_increment=${per * B}`, '--loops=4',
        '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--verify_state_save=0', '--allow_file_create=0', '--group_reporting',
      ], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
      const im = imageStats(m.mnt, 'vm.img')!
      expect(im.nativeWrites).toBeGreaterThan(100)
      expect(status(m.mnt).direct.writesTogetherMax).toBeGreaterThanOrEqual(Math.max(2, before))
      // The bytes fio wrote, read back through the mount, are the HDD file's after the unmount.
      const via = Buffer.alloc(8 * per * B)
      const rfd = fs.openSync(path.join(m.mnt, 'vm.img'), 'r')
      fs.readSync(rfd, via, 0, via.length, first * B)
      fs.closeSync(rfd)
      expect(await m.stop()).toBe(0)
      const hdd = Buffer.alloc(via.length)
      const hfd = fs.openSync(img, 'r')
      fs.readSync(hfd, hdd, 0, hdd.length, first * B)
      fs.closeSync(hfd)
      expect(hdd.equals(via)).toBe(true)
    } finally {
      if (m.proc.exitCode === null) await m.stop()
    }
    e2fsckClean(img)
  })

  it('a reclassification storm: a range of data blocks turns directory and back while native writers and readers work on it; every byte agrees, after destage and a remount too', async () => {
    const { store, img } = freshStore('store-storm')
    const [first, count] = bigRun(64)
    const R = Math.min(count, 64)
    const mnt = path.join(base, 'mnt-storm')
    let m = await mount(store, mnt, ['--ram-cache', '1M'])
    const file = path.join(mnt, 'vm.img')
    const victim = Buffer.alloc(256)
    const vfd = fs.openSync(img, 'r')
    fs.readSync(vfd, victim, 0, 256, victimAt)
    fs.closeSync(vfd)
    // The victim as a directory whose one extent covers the range.
    const asDir = Buffer.from(victim)
    asDir.writeUInt16LE(0o40755, 0)
    asDir.writeUInt32LE(R * B, 4)
    asDir.writeUInt16LE(2, 26)
    asDir.writeUInt32LE(0x80000, 32)
    asDir.fill(0, 40, 100)
    asDir.writeUInt16LE(0xf30a, 40)
    asDir.writeUInt16LE(1, 42)
    asDir.writeUInt16LE(4, 44)
    asDir.writeUInt16LE(0, 46)
    asDir.writeUInt32LE(0, 52)
    asDir.writeUInt16LE(R, 56)
    asDir.writeUInt16LE(0, 58)
    asDir.writeUInt32LE(first, 60)
    const workers: ChildProcess[] = []
    try {
      const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT)
      fs.closeSync(fd)
      await nativeOn(m)
      // 4 workers, each owning every 4th block of the range: write a new pattern, read it back, forever; they log the last pattern of each block.
      const py = `
import os, mmap, sys, time
path, first, R, k, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
fd = os.open(path, os.O_RDWR | os.O_DIRECT)
w = mmap.mmap(-1, 4096); r = mmap.mmap(-1, 4096)
last = {}
n = 0
end = time.time() + float(sys.argv[6])
while time.time() < end:
    for b in range(first + k, first + R, 4):
        n += 1
        w.seek(0); w.write((b"%d:%d:%d|" % (k, b, n)) * 200 + b"x" * (4096 - 200 * len(b"%d:%d:%d|" % (k, b, n))))
        os.pwrite(fd, w, b * 4096)
        os.preadv(fd, [r], b * 4096)
        if r[:] != w[:]:
            print("MISMATCH", b, n, flush=True); sys.exit(2)
        last[b] = n
with open(out, "w") as f:
    for b, v in last.items(): f.write("%d %d\\n" % (b, v))
`
      const script = path.join(base, 'storm.py')
      fs.writeFileSync(script, py)
      const exits: Promise<number | null>[] = []
      for (let k = 0; k < 4; k++) {
        const p = spawn('python3', [script, file, String(first), String(R), String(k), path.join(base, `storm-${k}.txt`), '8'], { stdio: ['ignore', 'pipe', 'pipe'] })
        let out = ''
        p.stdout!.on('data', (d) => (out += d))
        p.stderr!.on('data', (d) => (out += d))
        workers.push(p)
        exits.push(new Promise((res) => p.on('exit', (c) => (c === 0 ? res(c) : (console.error(out), res(c))))))
      }
      // The workers alone first: their blocks are data, written natively.
      await waitFor(() => imageStats(m.mnt, 'vm.img')!.nativeWrites > 50, 10_000, 'native writes of the range')
      // The storm: the victim inode flips between its own file and a directory over the range.
      const sfd = fs.openSync(file, fs.constants.O_RDWR)
      let flips = 0
      let sawDir = 0
      const stormEnd = Date.now() + 5000
      while (Date.now() < stormEnd) {
        fs.writeSync(sfd, asDir, 0, 256, victimAt)
        if (flips % 10 === 0) {
          const runs = liveMap(m.mnt, 'vm.img').runs
          if (runs.some(([s, c, k]) => k === 'directory' && s <= first && s + c > first)) sawDir++
        }
        fs.writeSync(sfd, victim, 0, 256, victimAt)
        flips++
      }
      fs.closeSync(sfd)
      const codes = await Promise.all(exits)
      expect(codes).toEqual([0, 0, 0, 0])
      expect(flips).toBeGreaterThan(20)
      expect(sawDir).toBeGreaterThan(0)
      const im = imageStats(m.mnt, 'vm.img')!
      expect(im.reclassified).toBeGreaterThan(flips)
      // What each worker wrote last is what the mount reads, then the HDD after destage, then a remount.
      const expected = new Map<number, Buffer>()
      for (let k = 0; k < 4; k++) {
        for (const line of fs.readFileSync(path.join(base, `storm-${k}.txt`), 'utf8').trim().split('\n')) {
          const [b, n] = line.split(' ').map(Number)
          const head = Buffer.from(`${k}:${b}:${n}|`)
          const blk = Buffer.alloc(B, 'x')
          for (let i = 0; i < 200; i++) head.copy(blk, i * head.length)
          expected.set(b, blk)
        }
      }
      expect(expected.size).toBe(R)
      const check = (readBlock: (b: number) => Buffer, where: string) => {
        for (const [b, want] of expected) if (!readBlock(b).equals(want)) throw new Error(`block ${b} differs ${where}`)
      }
      const readVia = (p: string) => (b: number) => {
        const x = Buffer.alloc(B)
        const f = fs.openSync(p, 'r')
        fs.readSync(f, x, 0, B, b * B)
        fs.closeSync(f)
        return x
      }
      check(readVia(file), 'through the mount')
      destage(m.mnt)
      expect(await m.stop()).toBe(0)
      check(readVia(img), 'on the HDD file after destage and unmount')
      m = await mount(store, mnt, ['--ram-cache', '1M'])
      check(readVia(file), 'after a remount')
    } finally {
      for (const w of workers) w.kill('SIGKILL')
      await m.stop()
    }
    // The victim is its old self again: the file system is clean.
    e2fsckClean(img)
  })
})

void waitFor
