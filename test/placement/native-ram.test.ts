// The RAM tier served by the binding on the libfuse thread (issue 5's RAM-hit
// cost): reads of an introspected image whose blocks are all in RAM never reach
// JavaScript. Checked through a real mount with O_DIRECT (every read reaches the
// daemon): the bytes, the counters (native hits counted as RAM hits of their
// class), read-your-writes through the native path, reads that span a cached and
// an uncached block, reads at and past EOF after truncates, and the switch that
// turns it off.
import { execFileSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { imageStats, status } from '../helpers/control'
import type { ImageStats } from '../../src/control/protocol'
import { mount, tmpdir, waitFor, type Mounted } from '../helpers/mount'

const B = 4096
let base = ''
let store = ''
let original = Buffer.alloc(0)
let itFirst = 0
let itLast = 0

beforeAll(() => {
  base = tmpdir('vmdi-native-ram-')
  store = path.join(base, 'store')
  fs.mkdirSync(store)
  const tree = path.join(base, 'tree')
  fs.mkdirSync(tree)
  for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(tree, `f${i}`), Buffer.alloc(1000 + i * 300, i))
  const img = path.join(store, 'vm.img')
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-N', '4096', '-d', tree, img, '32M'])
  const dump = execFileSync('dumpe2fs', [img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
  const m = /Inode table at (\d+)-(\d+)/.exec(dump)!
  itFirst = Number(m[1])
  itLast = Number(m[2])
  original = fs.readFileSync(img)
})
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))


function image(m: Mounted): ImageStats {
  return imageStats(m.mnt)!
}

async function attached(m: Mounted): Promise<number> {
  const fd = fs.openSync(path.join(m.mnt, 'vm.img'), fs.constants.O_RDWR | fs.constants.O_DIRECT)
  await waitFor(() => {
    const im = image(m)
    return im?.scan.state === 'done' && im.preloaded > 0
  }, 60_000, 'scan and preload of vm.img')
  return fd
}

function readAt(fd: number, pos: number, len: number): Buffer {
  const b = Buffer.alloc(len)
  const n = fs.readSync(fd, b, 0, len, pos)
  return b.subarray(0, n)
}

describe('RAM hits answered by the binding', () => {
  it('serves cached meta-data blocks natively, counts them as RAM hits, and keeps read-your-writes and EOF', async () => {
    fs.writeFileSync(path.join(store, 'vm.img'), original)
    const m = await mount(store, path.join(base, 'mnt'), ['--ram-cache', '64M'])
    try {
      const fd = await attached(m)
      // The first inode-table block holds the root inode: preloaded into RAM (the scan read the
      // used inode tables, so the preload took its copies instead of reading them again).
      const at = itFirst * B
      const before = image(m)
      expect(before.scanKept).toBeGreaterThan(0)
      for (let i = 0; i < 50; i++) expect(readAt(fd, at, B).equals(original.subarray(at, at + B))).toBe(true)
      let after = image(m)
      expect(after.nativeRamHits - before.nativeRamHits).toBe(50)
      expect(after.classes['inode-table'].ramHits - (before.classes['inode-table']?.ramHits ?? 0)).toBe(50)
      expect(after.classes['inode-table'].reads - (before.classes['inode-table']?.reads ?? 0)).toBe(50)
      const { ramNative } = status(m.mnt)
      expect(ramNative.hits).toBeGreaterThanOrEqual(50)
      expect(ramNative.lost).toBe(0)

      // Read-your-writes: a redirected write, then native reads return the new bytes.
      const blk = Buffer.from(original.subarray(at, at + B))
      blk.writeUInt32LE(0x5eed1234, 256 + 0x10) // the root inode's mtime
      fs.writeSync(fd, blk, 0, B, at)
      const n0 = image(m).nativeRamHits
      for (let i = 0; i < 5; i++) expect(readAt(fd, at, B).equals(blk)).toBe(true)
      expect(image(m).nativeRamHits - n0).toBe(5)
      // A part of the block, and a read spanning it and an uncached block (the datapath answers that one).
      expect(readAt(fd, at + 256, 512).equals(blk.subarray(256, 768))).toBe(true)
      const tail = itLast * B
      const span = readAt(fd, tail - B, 3 * B)
      const want = Buffer.from(original.subarray(tail - B, tail + 2 * B))
      if (itFirst === itLast - 1) blk.copy(want, 0)
      expect(span.equals(want)).toBe(true)

      // Truncate into the block: nothing past the new end is served; growing again reads zeros.
      fs.ftruncateSync(fd, at + 100)
      expect(readAt(fd, at, B).equals(blk.subarray(0, 100))).toBe(true)
      fs.ftruncateSync(fd, original.length)
      const grown = readAt(fd, at, B)
      expect(grown.length).toBe(B)
      expect(grown.subarray(0, 100).equals(blk.subarray(0, 100))).toBe(true)
      expect(grown.subarray(100).equals(Buffer.alloc(B - 100))).toBe(true)
      after = image(m)
      expect(after.nativeRamHits).toBeGreaterThan(0)
      fs.closeSync(fd)
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 120_000)

  it('VMDI_RAM_NATIVE=off leaves every read to the datapath (same bytes, no native hits)', async () => {
    fs.writeFileSync(path.join(store, 'vm.img'), original)
    fs.rmSync(path.join(base, 'state'), { recursive: true, force: true })
    const m = await mount(store, path.join(base, 'mnt'), ['--ram-cache', '64M'], { VMDI_RAM_NATIVE: 'off' })
    try {
      const fd = await attached(m)
      const at = itFirst * B
      for (let i = 0; i < 20; i++) expect(readAt(fd, at, B).equals(original.subarray(at, at + B))).toBe(true)
      const im = image(m)
      fs.closeSync(fd)
      expect(im.nativeRamHits).toBe(0)
      // Nor did the native data path read it: a meta-data block is JavaScript's.
      expect(im.nativeReads).toBe(0)
      expect(im.classes['inode-table'].ramHits).toBeGreaterThanOrEqual(20)
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 120_000)
})
