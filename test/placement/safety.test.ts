// The datapath's safety cases (issue 5 invariants 3-6, and control): a kill -9
// during a guest write workload, an image changed behind the store's back
// while the store holds dirty blocks of it, the SSD store full / failing /
// corrupt, rename, truncate and unlink of images, --no-introspect, --exclude
// and the owner's opt-out attribute.
import { execFileSync, spawn, spawnSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli } from '../helpers/cli'
import { destage, stats } from '../helpers/control'
import { isMounted, mount, tmpdir, waitFor, type Mounted } from '../helpers/mount'

let base = ''
beforeAll(() => {
  base = tmpdir('vmdi-safety-')
})
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

/** Days, not the default quarter second: dirty blocks stay in the SSD store until a test destages them. */
const NO_BACKGROUND_DESTAGE = { VMDI_DESTAGE_INTERVAL_MS: String(24 * 3600 * 1000) }

async function scanned(mnt: string, name: string): Promise<void> {
  await waitFor(() => stats(mnt).images.some((i) => i.path === name && i.scan.state === 'done'), 60_000, `the scan of ${name}`)
}

function ext4(file: string, size = '64M'): void {
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', file, size])
}

/** The daemon is gone (kill -9): clear its dead mount. */
function clearDead(mnt: string): void {
  spawnSync('fusermount', ['-u', '-z', mnt])
  spawnSync('umount', ['-l', mnt])
}

describe('kill -9 of the daemon during a guest write workload', () => {
  it('keeps everything fsync\'ed before the kill; after a remount, journal replay and destage e2fsck -fn is clean', async () => {
    const dir = path.join(base, 'crash')
    const store = path.join(dir, 'store')
    const guest = path.join(dir, 'guest')
    fs.mkdirSync(store, { recursive: true })
    fs.mkdirSync(guest)
    const img = path.join(store, 'vm.img')
    // A preallocated 4 MiB file the workload rewrites in place, as a database would: its blocks are
    // allocated data with no copies, so those writes take the native data path.
    const tree = path.join(dir, 'tree')
    fs.mkdirSync(tree)
    fs.writeFileSync(path.join(tree, 'db'), crypto.randomBytes(4 << 20))
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', tree, img, '128M'])
    const done = path.join(dir, 'synced.log') // outside the guest: names fsync'ed in it
    let m: Mounted = await mount(store, path.join(dir, 'mnt'), [], NO_BACKGROUND_DESTAGE)
    const loop = execFileSync('losetup', ['--direct-io=on', '-f', '--show', path.join(m.mnt, 'vm.img')], { encoding: 'utf8' }).trim()
    await scanned(m.mnt, 'vm.img')
    execFileSync('mount', [loop, guest])
    // The workload: files written, fsync'ed (file and directory), then recorded on the host.
    const script = `
      const fs = require('fs'), path = require('path'), crypto = require('crypto')
      const g = ${JSON.stringify(guest)}, log = fs.openSync(${JSON.stringify(done)}, 'a')
      const db = fs.openSync(path.join(g, 'db'), 'r+')
      for (let i = 0; ; i++) {
        const rec = Buffer.alloc(4096, String(i).padStart(12, '0') + '|')
        fs.writeSync(db, rec, 0, 4096, (i % 1024) * 4096); fs.fdatasyncSync(db)
        const d = path.join(g, 'd' + (i % 20)); fs.mkdirSync(d, { recursive: true })
        const body = crypto.createHash('sha256').update(String(i)).digest('hex').repeat(1 + i % 64)
        const fd = fs.openSync(path.join(d, 'f' + i), 'w'); fs.writeSync(fd, body); fs.fsyncSync(fd); fs.closeSync(fd)
        const dfd = fs.openSync(d, 'r'); fs.fsyncSync(dfd); fs.closeSync(dfd)
        fs.writeSync(log, i + '\\n'); fs.fsyncSync(log)
      }`
    const worker = spawn(process.execPath, ['-e', script], { stdio: 'ignore' })
    await waitFor(() => fs.existsSync(done) && fs.readFileSync(done, 'utf8').split('\n').length > 200, 60_000, 'the workload')
    // The in-place rewrites went to the HDD file natively (and are in flight when the kill comes).
    await waitFor(() => (stats(m.mnt).images.find((i) => i.path === 'vm.img')?.nativeWrites ?? 0) > 50, 30_000, 'native writes of the database file')
    await new Promise((r) => setTimeout(r, 300 + Math.floor(Math.random() * 700)))
    m.proc.kill('SIGKILL')
    await m.exited
    worker.kill('SIGKILL')
    spawnSync('umount', ['-l', guest])
    spawnSync('losetup', ['-d', loop])
    clearDead(m.mnt)
    const synced = fs.readFileSync(done, 'utf8').split('\n').filter(Boolean).map(Number)
    expect(synced.length).toBeGreaterThan(200)
    // Remount: the SSD store still holds the blocks the HDD file lacks; its clean copies are not trusted.
    m = await mount(store, m.mnt, [], NO_BACKGROUND_DESTAGE)
    try {
      const loop2 = execFileSync('losetup', ['--direct-io=on', '-f', '--show', path.join(m.mnt, 'vm.img')], { encoding: 'utf8' }).trim()
      try {
        execFileSync('mount', [loop2, guest]) // the kernel replays the journal, as a rebooted VM would
        try {
          for (const i of synced) {
            const body = crypto.createHash('sha256').update(String(i)).digest('hex').repeat(1 + (i % 64))
            const f = path.join(guest, `d${i % 20}`, `f${i}`)
            if (!fs.existsSync(f) || fs.readFileSync(f, 'utf8') !== body) throw new Error(`file ${i} was fsync'ed before the kill but is ${fs.existsSync(f) ? 'different' : 'missing'}`)
          }
          // Each database block holds its last synced record, or a later one (written, not yet logged).
          const dbBytes = fs.readFileSync(path.join(guest, 'db'))
          const last = new Map<number, number>()
          for (const i of synced) last.set(i % 1024, i)
          for (const [k, i] of last) {
            const got = Number(dbBytes.toString('latin1', k * 4096, k * 4096 + 12))
            if (!(got >= i && got % 1024 === k)) throw new Error(`database block ${k}: record ${i} was fsync'ed before the kill, the block holds ${got}`)
          }
        } finally {
          execFileSync('umount', [guest])
        }
      } finally {
        execFileSync('losetup', ['-d', loop2])
      }
      destage(m.mnt)
      const dropped = /image vm\.img: no clean-unmount record \(the last mount did not end cleanly\): \d+ clean cached block\(s\) dropped, [1-9]\d* unwritten block\(s\) kept/
      const mm = m
      await waitFor(() => dropped.test(mm.log()), 10_000, 'the line about the unclean stop')
    } finally {
      expect(await m.stop()).toBe(0)
    }
    const fsck = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' })
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0)
  }, 240_000)
})

describe('an image changed on the HDD behind the store\'s back while the store holds dirty blocks of it', () => {
  it('is refused with its name and the recover command; other images keep working; recover --apply and --discard resolve it', async () => {
    const dir = path.join(base, 'conflict')
    const store = path.join(dir, 'store')
    fs.mkdirSync(store, { recursive: true })
    for (const n of ['a.img', 'b.img', 'c.img']) ext4(path.join(store, n), '16M')
    let m = await mount(store, path.join(dir, 'mnt'), [], NO_BACKGROUND_DESTAGE)
    const mine = Buffer.alloc(512, 0xab) // written through the mount into block 0 (superblock class: redirected)
    const theirs = Buffer.alloc(512, 0xcd) // written on the HDD behind the store's back
    const handles: fs.promises.FileHandle[] = []
    for (const n of ['a.img', 'c.img']) {
      const fh = await fs.promises.open(path.join(m.mnt, n), 'r+')
      handles.push(fh)
      await scanned(m.mnt, n)
      await fh.write(mine, 0, 512, 0)
      await fh.sync()
    }
    expect(stats(m.mnt).images.filter((i) => i.dirtyBlocks > 0).map((i) => i.path).sort()).toEqual(['a.img', 'c.img'])
    // Killed with the images open: nothing destaged them.
    m.proc.kill('SIGKILL')
    await m.exited
    clearDead(m.mnt)
    for (const h of handles) await h.close().catch(() => undefined)
    for (const n of ['a.img', 'c.img']) {
      const fd = fs.openSync(path.join(store, n), 'r+')
      expect(fs.readFileSync(path.join(store, n)).subarray(0, 512).equals(mine)).toBe(false) // still only in the SSD store
      fs.writeSync(fd, theirs, 0, 512, 0)
      fs.closeSync(fd)
    }
    // A mount that would not look in the SSD store refuses to serve stale bytes.
    const plain = runCli(['-f', '--no-introspect', store, m.mnt], { env: { ...process.env, VMDI_STATE_DIR: path.join(dir, 'state') } })
    expect(plain.status).toBe(1)
    expect(plain.stderr).toMatch(/still holds unwritten blocks of .*a\.img \(1\).*mount once without --no-introspect/)
    expect(isMounted(m.mnt)).toBe(false)
    m = await mount(store, m.mnt, [], NO_BACKGROUND_DESTAGE)
    try {
      let err: NodeJS.ErrnoException | null = null
      try {
        fs.readFileSync(path.join(m.mnt, 'a.img'))
      } catch (e) {
        err = e as NodeJS.ErrnoException
      }
      expect(err?.code).toBe('EIO')
      const refusal = /image a\.img changed on the HDD behind the SSD store's back .*vmdi-fuse recover --apply .*a\.img.*--discard/
      await waitFor(() => refusal.test(m.log()), 10_000, 'the refusal in the log')
      // Another image of the same mount works.
      const b = fs.readFileSync(path.join(m.mnt, 'b.img'))
      expect(b.readUInt16LE(1024 + 0x38)).toBe(0xef53)
      expect(stats(m.mnt).refused).toContain('a.img')
    } finally {
      expect(await m.stop()).toBe(0)
    }
    const env = { ...process.env, VMDI_STATE_DIR: path.join(dir, 'state') }
    const none = runCli(['recover', path.join(store, 'a.img')], { env })
    expect(none.status).toBe(2)
    expect(none.stderr).toMatch(/--apply .*--discard/)
    expect(runCli(['recover', '--apply', path.join(store, 'a.img')], { env }).status).toBe(0)
    expect(runCli(['recover', '--discard', path.join(store, 'c.img')], { env }).status).toBe(0)
    expect(fs.readFileSync(path.join(store, 'a.img')).subarray(0, 512).equals(mine)).toBe(true)
    expect(fs.readFileSync(path.join(store, 'c.img')).subarray(0, 512).equals(theirs)).toBe(true)
    const again = runCli(['recover', '--discard', path.join(store, 'c.img')], { env })
    expect(again.status).toBe(1)
    expect(again.stderr).toMatch(/holds nothing of .*c\.img/)
    m = await mount(store, m.mnt, [], NO_BACKGROUND_DESTAGE)
    try {
      expect(fs.readFileSync(path.join(m.mnt, 'a.img')).subarray(0, 512).equals(mine)).toBe(true)
      expect(fs.readFileSync(path.join(m.mnt, 'c.img')).subarray(0, 512).equals(theirs)).toBe(true)
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 180_000)
})

describe('rename, truncate and unlink of images', () => {
  it('follow the image in the store: a renamed image keeps its blocks, a truncated one drops those past the end, an unlinked one is forgotten', async () => {
    const dir = path.join(base, 'names')
    const store = path.join(dir, 'store')
    fs.mkdirSync(store, { recursive: true })
    ext4(path.join(store, 'x.img'), '16M')
    const m = await mount(store, path.join(dir, 'mnt'), [], NO_BACKGROUND_DESTAGE)
    try {
      const fh = await fs.promises.open(path.join(m.mnt, 'x.img'), 'r+')
      await scanned(m.mnt, 'x.img')
      const mark = crypto.randomBytes(512)
      await fh.write(mark, 0, 512, 0)
      await fh.sync()
      const held = stats(m.mnt).images[0].ssdBlocks
      expect(held).toBeGreaterThan(10)
      fs.renameSync(path.join(m.mnt, 'x.img'), path.join(m.mnt, 'y.img'))
      expect(stats(m.mnt).images.map((i) => i.path)).toEqual(['y.img'])
      expect((await fh.read(Buffer.alloc(512), 0, 512, 0)).buffer.equals(mark)).toBe(true)
      await fh.truncate(1 << 20)
      const after = stats(m.mnt).images[0]
      expect(after.ssdBlocks).toBeLessThan(held)
      expect(after.ssdBlocks).toBeLessThanOrEqual(256)
      expect((await fh.stat()).size).toBe(1 << 20)
      await fh.close()
      expect(fs.readFileSync(path.join(m.mnt, 'y.img')).subarray(0, 512).equals(mark)).toBe(true)
      fs.unlinkSync(path.join(m.mnt, 'y.img'))
      await waitFor(() => stats(m.mnt).images.length === 0, 10_000, 'the image to be forgotten')
    } finally {
      expect(await m.stop()).toBe(0)
    }
    const r = runCli(['recover', '--discard', path.join(store, 'y.img')], { env: { ...process.env, VMDI_STATE_DIR: path.join(dir, 'state') } })
    expect(r.stderr).toMatch(/holds nothing of .*y\.img/)
  }, 120_000)
})

/** A guest ext4 workload through the mount; e2fsck and sampled file bytes checked on the HDD file after unmount. */
async function guestWorkload(dir: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ stats: ReturnType<typeof stats>; log: string }> {
  const store = path.join(dir, 'store')
  const guest = path.join(dir, 'guest')
  fs.mkdirSync(store, { recursive: true })
  fs.mkdirSync(guest)
  const img = path.join(store, 'vm.img')
  ext4(img, '128M')
  const m = await mount(store, path.join(dir, 'mnt'), args, env)
  const bodies = new Map<string, string>()
  let st: ReturnType<typeof stats>
  try {
    const loop = execFileSync('losetup', ['--direct-io=on', '-f', '--show', path.join(m.mnt, 'vm.img')], { encoding: 'utf8' }).trim()
    try {
      await scanned(m.mnt, 'vm.img')
      execFileSync('mount', [loop, guest])
      try {
        for (let d = 0; d < 20; d++) {
          fs.mkdirSync(path.join(guest, `d${d}`))
          for (let f = 0; f < 100; f++) {
            const body = `${d}.${f} `.repeat(1 + ((d + f) % 200))
            fs.writeFileSync(path.join(guest, `d${d}`, `f${f}`), body)
            bodies.set(`d${d}/f${f}`, body)
          }
          execFileSync('sync', ['-f', guest])
        }
      } finally {
        execFileSync('umount', [guest])
      }
    } finally {
      execFileSync('losetup', ['-d', loop])
    }
    st = stats(m.mnt)
  } finally {
    expect(await m.stop()).toBe(0)
  }
  const fsck = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' })
  expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0)
  for (const [rel, body] of [...bodies].filter((_, i) => i % 97 === 0)) {
    expect(execFileSync('debugfs', ['-R', `cat /${rel}`, img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })).toBe(body)
  }
  return { stats: st, log: m.log() }
}

describe('the SSD store full, failing or corrupt', () => {
  it('over its cap (--ssd-max): meta-data writes go to the HDD, the guest never sees an error', async () => {
    // Background destage every 5 s (not 250 ms): the guest's bursts outrun it and reach the cap.
    const r = await guestWorkload(path.join(base, 'cap'), ['--ssd-max', '1M'], { VMDI_DESTAGE_INTERVAL_MS: '5000' })
    expect(r.stats.images[0].writeThrough).toBeGreaterThan(0)
  }, 180_000)

  it('on a file system that fills up: the store is abandoned, what it held goes to the HDD, the guest never sees an error', async () => {
    const dir = path.join(base, 'full')
    const ssdDir = path.join(dir, 'ssd')
    fs.mkdirSync(ssdDir, { recursive: true })
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1200k', 'vmdi-test-ssd', ssdDir])
    try {
      const r = await guestWorkload(dir, ['--ssd', path.join(ssdDir, 'store.sqlite'), '--ssd-max', '1G'])
      expect(r.stats.ssd?.failed).toMatch(/SSD store .*store\.sqlite/)
      expect(r.log).toMatch(/was removed \(everything it held is on the HDD\)/)
      expect(fs.existsSync(path.join(ssdDir, 'store.sqlite'))).toBe(false)
    } finally {
      execFileSync('umount', [ssdDir])
    }
  }, 180_000)

  it('corrupt, or inside the store: a one-line error naming it and the fix, nothing mounted', () => {
    const dir = path.join(base, 'corrupt')
    const store = path.join(dir, 'store')
    const mnt = path.join(dir, 'mnt')
    fs.mkdirSync(store, { recursive: true })
    fs.mkdirSync(mnt)
    const bogus = path.join(dir, 'bogus.sqlite')
    fs.writeFileSync(bogus, 'not an SQLite database '.repeat(500))
    const r = runCli(['-f', '--ssd', bogus, store, mnt])
    expect(r.status).not.toBe(0)
    expect(r.stderr).toMatch(/SSD store .*bogus\.sqlite is not usable: .*move it aside.*--no-introspect/)
    expect(isMounted(mnt)).toBe(false)
    const inside = runCli(['-f', '--ssd', path.join(store, 's.sqlite'), store, mnt])
    expect(inside.status).toBe(2)
    expect(inside.stderr).toMatch(/--ssd .*s\.sqlite is inside the store/)
    const size = runCli(['-f', '--ram-cache', 'lots', store, mnt])
    expect(size.status).toBe(2)
    expect(size.stderr).toMatch(/--ram-cache "lots" is not a size/)
    for (const [flag, v, why] of [
      ['--small-files', 'few', /--small-files "few" is not a size/],
      ['--small-files', '4M', /--small-files 4M is above 1 MiB: .*or 0 to turn it off/],
      ['--new-data', 'plenty', /--new-data "plenty" is not a size/],
    ] as const) {
      const r2 = runCli(['-f', flag, v, store, mnt])
      expect(r2.status).toBe(2)
      expect(r2.stderr).toMatch(why)
    }
    expect(isMounted(mnt)).toBe(false)
  })
})

describe('introspection stays the user\'s choice', () => {
  it('--no-introspect serves images as plain files; --exclude and the owner\'s user.vmdi.introspect=off keep an image out', async () => {
    const dir = path.join(base, 'control')
    const store = path.join(dir, 'store')
    fs.mkdirSync(path.join(store, 'scratch'), { recursive: true })
    for (const n of ['in.img', 'scratch/out.img', 'optout.img']) ext4(path.join(store, n), '8M')
    execFileSync('setfattr', ['-n', 'user.vmdi.introspect', '-v', 'off', path.join(store, 'optout.img')])
    let m = await mount(store, path.join(dir, 'mnt'), ['--exclude', 'scratch/**'])
    try {
      for (const n of ['in.img', 'scratch/out.img', 'optout.img']) expect(fs.readFileSync(path.join(m.mnt, n)).readUInt16LE(1024 + 0x38)).toBe(0xef53)
      await scanned(m.mnt, 'in.img')
      expect(stats(m.mnt).images.map((i) => i.path)).toEqual(['in.img'])
    } finally {
      expect(await m.stop()).toBe(0)
    }
    m = await mount(store, m.mnt, ['--no-introspect'])
    try {
      expect(m.log()).toMatch(/datapath off \(--no-introspect\)/)
      expect(fs.readFileSync(path.join(m.mnt, 'in.img')).readUInt16LE(1024 + 0x38)).toBe(0xef53)
      const r = runCli(['stats', m.mnt])
      expect(r.status).toBe(0)
      expect(r.stdout).toMatch(/pass-through \(--no-introspect\)/)
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 120_000)
})

describe('the benchmark rig options', () => {
  it('--emulate-hdd counts every HDD request; --cache-mode conventional keeps the bytes exact; unknown values are refused', async () => {
    const dir = path.join(base, 'rig')
    const store = path.join(dir, 'store')
    fs.mkdirSync(store, { recursive: true })
    ext4(path.join(store, 'vm.img'), '16M')
    fs.writeFileSync(path.join(store, 'plain.bin'), crypto.randomBytes(300_000))
    fs.mkdirSync(path.join(dir, 'mnt'))
    const bad = runCli(['-f', '--emulate-hdd', 'floppy', store, path.join(dir, 'mnt')])
    expect(bad.status).toBe(2)
    expect(bad.stderr).toMatch(/--emulate-hdd floppy is not a known disk profile: use laptop5400/)
    const badMode = runCli(['-f', '--cache-mode', 'magic', store, path.join(dir, 'mnt')])
    expect(badMode.status).toBe(2)
    const m = await mount(store, path.join(dir, 'mnt'), ['--emulate-hdd', 'laptop5400', '--cache-mode', 'conventional', '--ram-cache', '64K'])
    try {
      let sh = fs.readFileSync(path.join(store, 'vm.img'))
      const fh = await fs.promises.open(path.join(m.mnt, 'vm.img'), fs.constants.O_RDWR | fs.constants.O_DIRECT)
      let seed = 7
      const r = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
      for (let i = 0; i < 400; i++) {
        const pos = Math.floor(r() * (sh.length - 70_000))
        const len = 1 + Math.floor(r() * 65_536)
        if (r() < 0.5) {
          const got = Buffer.alloc(len)
          await fh.read(got, 0, len, pos)
          if (!got.equals(sh.subarray(pos, pos + len))) throw new Error(`op ${i}: read ${pos}+${len} differs`)
        } else {
          const data = crypto.randomBytes(len)
          await fh.write(data, 0, len, pos)
          data.copy(sh, pos)
        }
      }
      await fh.close()
      expect(fs.readFileSync(path.join(m.mnt, 'plain.bin')).equals(fs.readFileSync(path.join(store, 'plain.bin')))).toBe(true)
      const st = stats(m.mnt)
      expect(st.mode).toBe('conventional')
      expect(st.hdd?.requests).toBeGreaterThan(100)
      expect(st.images[0].scan.state).toBe('off')
      expect(st.images[0].classes.data.ramHits).toBeGreaterThan(0)
      expect(fs.readFileSync(path.join(store, 'vm.img')).equals(sh)).toBe(true) // write-through: the HDD file is current
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 120_000)
})

describe('an image written on the HDD behind the mount with no dirty blocks', () => {
  it('is never served from stale cached copies: after a clean unmount, and while mounted but closed', async () => {
    const dir = path.join(base, 'behind')
    const store = path.join(dir, 'store')
    fs.mkdirSync(store, { recursive: true })
    const img = path.join(store, 'vm.img')
    ext4(img, '32M')
    const itable = Number(/Inode table at (\d+)/.exec(execFileSync('dumpe2fs', [img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }))![1])
    const at = (itable + 3) * 4096 // an inode-table block: preloaded into the SSD store and RAM
    const behind = (v: number) => {
      const fd = fs.openSync(img, 'r+')
      fs.writeSync(fd, Buffer.alloc(4096, v), 0, 4096, at)
      fs.closeSync(fd)
    }
    const readThrough = (mnt: string) => {
      const fd = fs.openSync(path.join(mnt, 'vm.img'), fs.constants.O_RDONLY | fs.constants.O_DIRECT)
      try {
        const b = Buffer.alloc(4096)
        fs.readSync(fd, b, 0, 4096, at)
        return b
      } finally {
        fs.closeSync(fd)
      }
    }
    let m = await mount(store, path.join(dir, 'mnt'))
    try {
      const fd = fs.openSync(path.join(m.mnt, 'vm.img'), 'r')
      await waitFor(() => stats(m.mnt).images.some((i) => i.scan.state === 'done' && i.scan.warm), 30_000, 'the preload')
      expect(stats(m.mnt).images[0].ssdBlocks).toBeGreaterThan(10)
      fs.closeSync(fd)
    } finally {
      expect(await m.stop()).toBe(0)
    }
    behind(0x5a)
    m = await mount(store, m.mnt)
    try {
      expect(readThrough(m.mnt).equals(Buffer.alloc(4096, 0x5a))).toBe(true)
      await waitFor(() => /changed on the HDD since the last clean unmount/.test(m.log()), 10_000, 'the log line')
      // Mounted, closed, destaged: written behind the mount, then opened again.
      await waitFor(() => stats(m.mnt).images[0]?.scan.state === 'done', 30_000, 'the scan')
      await new Promise((r) => setTimeout(r, 500))
      behind(0xa5)
      expect(readThrough(m.mnt).equals(Buffer.alloc(4096, 0xa5))).toBe(true)
      await waitFor(() => /changed on the HDD while closed/.test(m.log()), 10_000, 'the log line')
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 120_000)
})
