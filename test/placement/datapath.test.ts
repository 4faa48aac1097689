// The Datapath without a FUSE mount (issue 15, item 7): a Datapath over a
// temporary store directory of real images (ext4 made by mke2fs -d, one qcow2
// converted by qemu-img, one MBR disk with its partition at sector 63),
// driven through its public API only (attach, read, write, release,
// truncated, unlinked, renamed, destageCommand, stats, images, close) the
// way the mount drives it. Guest writes are the 4 KiB blocks debugfs changed
// on a copy of the image (a new directory tree, a file, the label), replayed
// through write(); the oracles are inspect of the changed file, e2fsprogs
// (dumpe2fs, debugfs, e2fsck) and the bytes of the files themselves.
// Besides the public API, one call reaches past it: `dp.ssd.commit()`, what a
// guest's fsync waits for, before a "crash" (a Datapath never closed, and a
// new one opened on the same SSD store).
import { execFileSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { BlockClass, className, isMetadata } from '../../src/introspect/classes'
import type { ExtentMap } from '../../src/introspect/map/extent-map'
import { setLogSink } from '../../src/log'
import { Datapath, ImageRefused, type DatapathOptions, type ImageEntry } from '../../src/placement/datapath'
import {
  BLOCK,
  blocksOf,
  changedBlocks,
  debugfsCopy,
  dpOptions,
  freeBlocksOfGroup0,
  fsck,
  imageStats,
  inspectMap,
  makeTree,
  mkExt4,
  readVia,
  replay,
  seededBytes,
  until,
  warm,
  writeVia,
} from '../helpers/datapath'
import { e2oracle } from '../helpers/e2oracle'
import { rng } from '../helpers/rng'

let base = ''
/** The ext4 image A, A' (debugfs: a new directory tree, a file, a label) and A'' (more of the same on A'). */
let imgA = ''
let imgA1 = ''
let imgA2 = ''
let A = Buffer.alloc(0)
let A1 = Buffer.alloc(0)
let A2 = Buffer.alloc(0)
let mapA: ExtentMap
/** inspect of A, A' and A'' (the files alone). */
let insA: Awaited<ReturnType<typeof inspectMap>>
let insA1: Awaited<ReturnType<typeof inspectMap>>
let insA2: Awaited<ReturnType<typeof inspectMap>>
let logs: string[] = []
const open: Datapath[] = []

beforeAll(async () => {
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-dp-'))
  const tree = path.join(base, 'tree')
  makeTree(tree)
  imgA = path.join(base, 'A.img')
  mkExt4(imgA, tree)
  const host = path.join(base, 'hostfile')
  fs.writeFileSync(host, seededBytes(5, 20_000))
  imgA1 = path.join(base, 'A1.img')
  debugfsCopy(imgA, imgA1, ['mkdir /newdir', 'mkdir /newdir/sub', 'mkdir /d03/added', `write ${host} /newdir/file`, 'set_super_value volume_name first'])
  imgA2 = path.join(base, 'A2.img')
  debugfsCopy(imgA1, imgA2, ['mkdir /another', 'mkdir /another/deeper', `write ${host} /d05/copy`, 'rm /d01/f003', 'set_super_value volume_name second'])
  for (const f of [imgA, imgA1, imgA2]) expect(fsck(f).status, fsck(f).out).toBe(0)
  A = fs.readFileSync(imgA)
  A1 = fs.readFileSync(imgA1)
  A2 = fs.readFileSync(imgA2)
  insA = await inspectMap(imgA)
  insA1 = await inspectMap(imgA1)
  insA2 = await inspectMap(imgA2)
  mapA = insA.map
  setLogSink((line) => logs.push(line))
}, 120_000)

afterAll(() => {
  setLogSink((line) => process.stderr.write(line + '\n'))
  fs.rmSync(base, { recursive: true, force: true })
})

beforeEach(() => {
  logs = []
})

afterEach(async () => {
  for (const dp of open.splice(0)) await dp.close().catch(() => undefined)
})

let dirs = 0
/** A fresh store directory (real path) with `files` copied in, and an SSD store path outside it. */
function newStore(files: Record<string, string> = { 'vm.img': '' }): { store: string; ssd: string; abs: (rel: string) => string } {
  const dir = path.join(base, `t${++dirs}`)
  const store = path.join(dir, 'store')
  fs.mkdirSync(store, { recursive: true })
  const real = fs.realpathSync(store)
  for (const [rel, src] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(real, rel)), { recursive: true })
    fs.copyFileSync(src || imgA, path.join(real, rel))
  }
  return { store: real, ssd: path.join(dir, 'ssd.sqlite'), abs: (rel) => path.join(real, rel) }
}

/** Closes a datapath the test opened (once: afterEach closes the others). */
async function closeDp(dp: Datapath): Promise<void> {
  open.splice(open.indexOf(dp), 1)
  await dp.close()
}

function datapath(o: DatapathOptions): Datapath {
  const dp = new Datapath(o)
  open.push(dp)
  return dp
}

async function attach(dp: Datapath, store: string, rel: string): Promise<ImageEntry> {
  const e = await dp.attach(rel, path.join(store, rel))
  if (!e) throw new Error(`${rel} was not attached`)
  return e
}

async function readAll(dp: Datapath, e: ImageEntry, size: number): Promise<Buffer> {
  const parts: Buffer[] = []
  for (let at = 0; at < size; at += 1 << 20) parts.push(await readVia(dp, e, at, Math.min(1 << 20, size - at)))
  return Buffer.concat(parts)
}

/** Random unaligned reads through the datapath, each compared with `want`. */
async function randomReads(dp: Datapath, e: ImageEntry, want: Buffer, n: number, seed: number): Promise<void> {
  const r = rng(seed)
  for (let i = 0; i < n; i++) {
    const pos = Math.floor(r() * (want.length + 3 * BLOCK))
    const len = 1 + Math.floor(r() * (r() < 0.7 ? 9000 : 200_000))
    const got = await readVia(dp, e, pos, len)
    const exp = want.subarray(Math.min(pos, want.length), Math.min(pos + len, want.length))
    if (!got.equals(exp)) throw new Error(`read ${i} of ${len} bytes at ${pos}: ${got.length} bytes, not the ${exp.length} expected bytes of the file`)
  }
}

/** The per-class stats of an image summed over `classes`. */
function classSum(dp: Datapath, rel: string, classes: string[]): { reads: number; ramHits: number; ssdHits: number; hddReads: number; redirected: number; writes: number } {
  const out = { reads: 0, ramHits: 0, ssdHits: 0, hddReads: 0, redirected: 0, writes: 0 }
  const cs = imageStats(dp, rel).classes
  for (const c of classes) {
    const s = cs[c]
    if (!s) continue
    out.reads += s.reads
    out.ramHits += s.ramHits
    out.ssdHits += s.ssdHits
    out.hddReads += s.hddReads
    out.redirected += s.redirected
    out.writes += s.writes
  }
  return out
}

const blockOf = (b: Buffer, k: number) => b.subarray(k * BLOCK, (k + 1) * BLOCK)

describe('attach', () => {
  it('leaves a file under 1 MiB, a file that is no image and an excluded image alone; attaches an ext4 image once and scans it to done', async () => {
    const { store, ssd, abs } = newStore({ 'vm.img': '', 'skip/vm.img': '', 'deep/x.bak': '' })
    fs.writeFileSync(abs('small.img'), A.subarray(0, 512 << 10)) // an ext4 superblock, but 512 KiB
    fs.writeFileSync(abs('notes.txt'), Buffer.from('not a disk image, only text '.repeat(150_000)))
    const dp = datapath(dpOptions(store, ssd, { exclude: ['skip/**', '**/*.bak'] }))
    expect(await dp.attach('small.img', abs('small.img'))).toBeNull()
    expect(await dp.attach('notes.txt', abs('notes.txt'))).toBeNull()
    expect(await dp.attach('skip/vm.img', abs('skip/vm.img'))).toBeNull()
    expect(await dp.attach('deep/x.bak', abs('deep/x.bak'))).toBeNull()
    expect(await dp.attach('missing.img', abs('missing.img'))).toBeNull()
    const e = await attach(dp, store, 'vm.img')
    expect(e.rel).toBe('vm.img')
    expect(await dp.attach('vm.img', abs('vm.img'))).toBe(e) // a second open: the same entry
    expect(dp.images().map((i) => i.rel)).toEqual(['vm.img'])
    const s = await warm(dp, 'vm.img')
    expect(dp.images()[0].scan.state).toBe('done')
    expect(s.scan.error).toBeNull()
    expect(s.scan.format).toBe(insA.format)
    expect(s.fileBytes).toBe(A.length)
    expect(dp.stats().refused).toEqual([])
  })

  it('maps the image as inspect maps the same file, and as e2fsprogs sees it', async () => {
    const { store, ssd, abs } = newStore()
    const dp = datapath(dpOptions(store, ssd, { smallFileBytes: 32 << 10 }))
    await attach(dp, store, 'vm.img')
    const s = await warm(dp, 'vm.img')
    const ins = await inspectMap(abs('vm.img'), { smallFileBytes: 32 << 10 })
    expect(s.mapClasses).toEqual(ins.counts)
    expect(s.mapClasses['small-file']).toBeGreaterThan(0)
    // e2fsprogs' own view (4 KiB fs blocks in a raw image: one fs block per file block).
    const oracle = e2oracle(abs('vm.img'))
    const want: Record<string, number> = {}
    for (const c of oracle.classes.values()) want[c] = (want[c] ?? 0) + 1
    for (const c of ['superblock', 'group-descriptor', 'block-bitmap', 'inode-bitmap', 'inode-table', 'directory', 'journal', 'symlink', 'extent-tree']) {
      expect(s.mapClasses[c] ?? 0, c).toBe(want[c] ?? 0)
    }
    expect(s.mapClasses.directory).toBeGreaterThanOrEqual(12 + 10 + 1)
  })
})

describe('reads', () => {
  it('return the HDD file\'s bytes before, during and after the scan (random unaligned offsets and lengths, past the end too)', async () => {
    const { store, ssd } = newStore()
    const dp = datapath(dpOptions(store, ssd, { ramBytes: 1 << 20 })) // RAM far smaller than the meta-data: evictions
    const e = await attach(dp, store, 'vm.img')
    const first = dp.images()[0].scan.state
    expect(['pending', 'running']).toContain(first)
    await randomReads(dp, e, A, 200, 11)
    await warm(dp, 'vm.img')
    await randomReads(dp, e, A, 400, 12)
    expect((await readAll(dp, e, A.length)).equals(A)).toBe(true)
    expect(await dp.read(e, Buffer.alloc(10), 10, A.length)).toBe(0)
    expect(dp.stats().ram.evictions).toBeGreaterThan(0)
  })
})

describe('scan and preload', () => {
  it('copy the meta-data to the SSD store and RAM: its reads are RAM hits, never HDD reads', async () => {
    const { store, ssd } = newStore()
    const dp = datapath(dpOptions(store, ssd))
    const e = await attach(dp, store, 'vm.img')
    const s = await warm(dp, 'vm.img')
    const classes = ['superblock', 'group-descriptor', 'block-bitmap', 'inode-bitmap', 'directory', 'extent-tree', 'symlink']
    const blocks: number[] = []
    for (const [st, n, cls] of mapA.runs()) if (classes.includes(className(cls))) for (let b = st; b < st + n; b++) blocks.push(b)
    expect(blocks.length).toBeGreaterThan(20)
    expect(dp.stats().ssd.heldBlocks).toBeGreaterThanOrEqual(blocks.length)
    expect(s.ssdBlocks).toBeGreaterThanOrEqual(blocks.length)
    expect(s.preloaded).toBeGreaterThanOrEqual(blocks.length)
    // All-zero blocks stay on the SSD store only (RAM keeps what lookups read): SSD hits, still no HDD read.
    const zero = Buffer.alloc(BLOCK)
    const nonZero = blocks.filter((b) => !blockOf(A, b).equals(zero))
    const allZero = blocks.filter((b) => blockOf(A, b).equals(zero))
    const before = classSum(dp, 'vm.img', classes)
    for (const b of nonZero) {
      expect((await readVia(dp, e, b * BLOCK, BLOCK)).equals(blockOf(A, b))).toBe(true)
      expect((await readVia(dp, e, b * BLOCK + 100, 1000)).equals(A.subarray(b * BLOCK + 100, b * BLOCK + 1100))).toBe(true)
    }
    const mid = classSum(dp, 'vm.img', classes)
    expect(mid.reads - before.reads).toBe(2 * nonZero.length)
    expect(mid.ramHits - before.ramHits).toBe(2 * nonZero.length)
    expect(mid.hddReads - before.hddReads).toBe(0)
    for (const b of allZero) expect((await readVia(dp, e, b * BLOCK, BLOCK)).equals(zero)).toBe(true)
    const after = classSum(dp, 'vm.img', classes)
    expect(after.hddReads - mid.hddReads).toBe(0)
    // File data still comes from the HDD file.
    const big = blocksOf(path.join(store, 'vm.img'), '/big')
    const d0 = imageStats(dp, 'vm.img').classes.data
    expect((await readVia(dp, e, big[3] * BLOCK, 2 * BLOCK)).equals(A.subarray(big[3] * BLOCK, (big[3] + 2) * BLOCK))).toBe(true)
    expect(imageStats(dp, 'vm.img').classes.data.hddReads - d0.hddReads).toBe(2)
  })
})

describe('the live map', () => {
  it('learns a new directory tree, a file and a label replayed block by block through write(), as a fresh inspect of the changed image maps it', async () => {
    const { store, ssd } = newStore()
    const dp = datapath(dpOptions(store, ssd))
    const e = await attach(dp, store, 'vm.img')
    const s0 = await warm(dp, 'vm.img')
    const before = insA
    const after = insA1
    expect(s0.mapClasses).toEqual(before.counts)
    expect(after.counts.directory).toBe(before.counts.directory + 3) // the test's premise: three new directories
    const changed = await replay(dp, e, A, A1, (b) => mapA.classOf(b))
    expect(changed.length).toBeGreaterThan(5)
    const s1 = imageStats(dp, 'vm.img')
    expect(s1.mapClasses).toEqual(after.counts)
    expect(s1.reclassified).toBeGreaterThan(0)
    expect((await readAll(dp, e, A.length)).equals(A1)).toBe(true)
    // A second round on top (a directory removed, more added).
    const after2 = insA2
    await replay(dp, e, A1, A2, (b) => after.map.classOf(b))
    expect(imageStats(dp, 'vm.img').mapClasses).toEqual(after2.counts)
  })
})

describe('redirected writes and destage', () => {
  it('keep meta-data writes off the HDD file until destaged; reads see them; destage and close leave the HDD file whole', async () => {
    const { store, ssd, abs } = newStore()
    const dp = datapath(dpOptions(store, ssd))
    const e = await attach(dp, store, 'vm.img')
    await warm(dp, 'vm.img')
    // Each changed block written as only its differing bytes (unaligned, partial: the rest of the block is read first).
    const changed = changedBlocks(A, A1)
    for (const k of [...changed.filter((k) => mapA.classOf(k) !== BlockClass.InodeTable), ...changed.filter((k) => mapA.classOf(k) === BlockClass.InodeTable)]) {
      let lo = 0
      let hi = BLOCK
      while (A[k * BLOCK + lo] === A1[k * BLOCK + lo]) lo++
      while (A[k * BLOCK + hi - 1] === A1[k * BLOCK + hi - 1]) hi--
      const bytes = Buffer.from(A1.subarray(k * BLOCK + lo, k * BLOCK + hi))
      expect(await dp.write(e, bytes, bytes.length, k * BLOCK + lo)).toBe(bytes.length)
    }
    const meta = changed.filter((k) => isMetadata(mapA.classOf(k)))
    expect(meta.length).toBeGreaterThanOrEqual(5)
    expect(meta).toContain(0) // the superblock (the label): a write of a few bytes at 1144
    const s = imageStats(dp, 'vm.img')
    expect(s.dirtyBlocks).toBeGreaterThanOrEqual(meta.length)
    expect(dp.stats().ssd.dirtyBlocks).toBe(s.dirtyBlocks)
    const hdd = fs.readFileSync(abs('vm.img'))
    for (const k of meta) expect(blockOf(hdd, k).equals(blockOf(A, k)), `block ${k} (meta-data) reached the HDD file`).toBe(true)
    expect((await readAll(dp, e, A.length)).equals(A1)).toBe(true)
    // destageCommand: everything to the HDD file.
    const out = await dp.destageCommand()
    expect(out).toEqual([{ path: 'vm.img', blocks: s.dirtyBlocks }])
    const d = imageStats(dp, 'vm.img')
    expect(d.dirtyBlocks).toBe(0)
    expect(d.destaged).toBe(s.dirtyBlocks)
    expect(fs.readFileSync(abs('vm.img')).equals(A1)).toBe(true)
    await expect(dp.destageCommand('other.img')).rejects.toThrow(/no image other\.img is attached/)
    // More writes, then close: it destages them too.
    await replay(dp, e, A1, A2, (b) => mapA.classOf(b))
    expect(imageStats(dp, 'vm.img').dirtyBlocks).toBeGreaterThan(0)
    expect(fs.readFileSync(abs('vm.img')).equals(A2)).toBe(false)
    dp.release(e)
    await closeDp(dp)
    expect(fs.readFileSync(abs('vm.img')).equals(A2)).toBe(true)
    const f = fsck(abs('vm.img'))
    expect(f.status, f.out).toBe(0)
  })

  it('are destaged in the background once the guest pauses', async () => {
    const { store, ssd, abs } = newStore()
    const dp = datapath(dpOptions(store, ssd, { destageIntervalMs: 20, destageIdleMs: 1000 }))
    const e = await attach(dp, store, 'vm.img')
    await warm(dp, 'vm.img')
    let maxDirty = 0
    const changed = changedBlocks(A, A1)
    for (const k of [...changed.filter((k) => mapA.classOf(k) !== BlockClass.InodeTable), ...changed.filter((k) => mapA.classOf(k) === BlockClass.InodeTable)]) {
      await writeVia(dp, e, k * BLOCK, Buffer.from(blockOf(A1, k)))
      maxDirty = Math.max(maxDirty, imageStats(dp, 'vm.img').dirtyBlocks) // destage waits for a 1 s pause
    }
    expect(maxDirty).toBeGreaterThan(0)
    // (A batch clears its blocks' dirty marks, then counts them as destaged once the SSD store has committed.)
    await until(() => {
      const s = imageStats(dp, 'vm.img')
      return s.dirtyBlocks === 0 && s.destaged >= maxDirty
    }, 20_000, 'the background destage')
    expect(fs.readFileSync(abs('vm.img')).equals(A1)).toBe(true)
  })
})

describe('the SSD store\'s budget', () => {
  it('with room for 4 blocks, meta-data writes beyond it go through to the HDD file; nothing is lost', async () => {
    const { store, ssd, abs } = newStore()
    const dp = datapath(dpOptions(store, ssd, { ssdMaxBytes: 4 * BLOCK }))
    const e = await attach(dp, store, 'vm.img')
    await warm(dp, 'vm.img')
    expect(dp.stats().ssd.capBlocks).toBe(4)
    expect(dp.stats().ssd.heldBlocks).toBeLessThanOrEqual(4)
    await replay(dp, e, A, A1, (b) => mapA.classOf(b))
    const s = imageStats(dp, 'vm.img')
    expect(s.writeThrough).toBeGreaterThan(0)
    expect(s.dirtyBlocks).toBeGreaterThan(0)
    expect(s.dirtyBlocks).toBeLessThanOrEqual(4)
    expect((await readAll(dp, e, A.length)).equals(A1)).toBe(true)
    dp.release(e)
    await closeDp(dp)
    expect(fs.readFileSync(abs('vm.img')).equals(A1)).toBe(true)
    const f = fsck(abs('vm.img'))
    expect(f.status, f.out).toBe(0)
  })
})

describe('new data', () => {
  it('writes into blocks free in the guest\'s bitmaps are held and destaged later; an overwrite of in-use data goes to the HDD at once', async () => {
    const { store, ssd, abs } = newStore()
    const dp = datapath(dpOptions(store, ssd, { newDataBytes: 16 << 20 }))
    const e = await attach(dp, store, 'vm.img')
    await warm(dp, 'vm.img')
    const free = freeBlocksOfGroup0(abs('vm.img')).find(([a, b]) => b - a >= 64)
    expect(free).toBeDefined()
    const s = free![0] + 8
    const s0 = imageStats(dp, 'vm.img')
    expect(s0.absorbed).toBe(0)
    // 16 whole free blocks, then 10,000 bytes at an unaligned offset over 3 more.
    const fresh = seededBytes(901, 16 * BLOCK)
    await writeVia(dp, e, s * BLOCK, fresh)
    const odd = seededBytes(902, 10_000)
    const oddAt = (s + 20) * BLOCK + 100
    await writeVia(dp, e, oddAt, odd)
    const s1 = imageStats(dp, 'vm.img')
    expect(s1.absorbed).toBe(16 + 3)
    expect(s1.dirtyBlocks).toBe(16 + 3)
    let hdd = fs.readFileSync(abs('vm.img'))
    expect(hdd.subarray(s * BLOCK, (s + 24) * BLOCK).equals(A.subarray(s * BLOCK, (s + 24) * BLOCK))).toBe(true)
    expect((await readVia(dp, e, s * BLOCK, fresh.length)).equals(fresh)).toBe(true)
    expect((await readVia(dp, e, oddAt, odd.length)).equals(odd)).toBe(true)
    // The bytes around the unaligned write are the old ones.
    expect((await readVia(dp, e, (s + 20) * BLOCK, 100)).equals(A.subarray((s + 20) * BLOCK, (s + 20) * BLOCK + 100))).toBe(true)
    // An overwrite of /big's data (in use): straight to the HDD file.
    const big = blocksOf(abs('vm.img'), '/big')
    const over = seededBytes(903, 2 * BLOCK)
    await writeVia(dp, e, big[7] * BLOCK, over)
    const s2 = imageStats(dp, 'vm.img')
    expect(s2.absorbed).toBe(s1.absorbed)
    expect(s2.dirtyBlocks).toBe(s1.dirtyBlocks)
    hdd = fs.readFileSync(abs('vm.img'))
    expect(hdd.subarray(big[7] * BLOCK, (big[7] + 2) * BLOCK).equals(over)).toBe(true)
    // Destaged later: the HDD file gets them, the store keeps nothing dirty.
    const out = await dp.destageCommand('vm.img')
    expect(out).toEqual([{ path: 'vm.img', blocks: 19 }])
    expect(imageStats(dp, 'vm.img').dirtyBlocks).toBe(0)
    hdd = fs.readFileSync(abs('vm.img'))
    expect(hdd.subarray(s * BLOCK, (s + 16) * BLOCK).equals(fresh)).toBe(true)
    expect(hdd.subarray(oddAt, oddAt + odd.length).equals(odd)).toBe(true)
  })

  it('with newDataBytes 0 the same write goes to the HDD file at once', async () => {
    const { store, ssd, abs } = newStore()
    const dp = datapath(dpOptions(store, ssd, { newDataBytes: 0 }))
    const e = await attach(dp, store, 'vm.img')
    await warm(dp, 'vm.img')
    const free = freeBlocksOfGroup0(abs('vm.img')).find(([a, b]) => b - a >= 64)!
    const fresh = seededBytes(905, 16 * BLOCK)
    await writeVia(dp, e, (free[0] + 8) * BLOCK, fresh)
    const s = imageStats(dp, 'vm.img')
    expect(s.absorbed).toBe(0)
    expect(s.dirtyBlocks).toBe(0)
    expect(fs.readFileSync(abs('vm.img')).subarray((free[0] + 8) * BLOCK, (free[0] + 24) * BLOCK).equals(fresh)).toBe(true)
  })
})

describe('restart', () => {
  it('after close, a new Datapath on the same SSD store restores the map, refills RAM from the store and keeps every byte', async () => {
    const { store, ssd, abs } = newStore()
    const dp1 = datapath(dpOptions(store, ssd))
    const e1 = await attach(dp1, store, 'vm.img')
    await warm(dp1, 'vm.img')
    await replay(dp1, e1, A, A1, (b) => mapA.classOf(b))
    const held = dp1.stats().ssd.heldBlocks
    dp1.release(e1)
    await closeDp(dp1)
    expect(fs.readFileSync(abs('vm.img')).equals(A1)).toBe(true)
    const dp2 = datapath(dpOptions(store, ssd))
    const e2 = await attach(dp2, store, 'vm.img')
    const s = await warm(dp2, 'vm.img')
    expect(s.scan.restored).toBe(true)
    expect(s.ramRefilled).toBeGreaterThan(0)
    expect(s.dirtyBlocks).toBe(0)
    expect(dp2.stats().ssd.heldBlocks).toBeGreaterThanOrEqual(held - 10)
    const after = insA1
    expect(s.mapClasses).toEqual(after.counts)
    // The first directory reads hit RAM (refilled from the store, not read from the HDD).
    const dirs: number[] = []
    for (const [st, n, cls] of after.map.runs()) if (cls === BlockClass.Directory) for (let b = st; b < st + n; b++) dirs.push(b)
    const c0 = classSum(dp2, 'vm.img', ['directory'])
    for (const b of dirs) expect((await readVia(dp2, e2, b * BLOCK, BLOCK)).equals(blockOf(A1, b))).toBe(true)
    const c1 = classSum(dp2, 'vm.img', ['directory'])
    expect(c1.reads - c0.reads).toBe(dirs.length)
    expect(c1.hddReads - c0.hddReads).toBe(0)
    expect(c1.ramHits - c0.ramHits).toBe(dirs.length)
    expect((await readAll(dp2, e2, A.length)).equals(A1)).toBe(true)
    // The restored map keeps up with new writes as a scanned one does.
    await replay(dp2, e2, A1, A2, (b) => after.map.classOf(b))
    expect(imageStats(dp2, 'vm.img').mapClasses).toEqual(insA2.counts)
  })

  it('after a crash (no close once the SSD store committed), a new Datapath keeps the dirty blocks, serves them and destages them', async () => {
    const { store, ssd, abs } = newStore()
    const dp1 = new Datapath(dpOptions(store, ssd)) // never closed: it "dies" after its commit
    const e1 = await attach(dp1, store, 'vm.img')
    await warm(dp1, 'vm.img')
    await replay(dp1, e1, A, A1, (b) => mapA.classOf(b))
    const dirty = imageStats(dp1, 'vm.img').dirtyBlocks
    expect(dirty).toBeGreaterThan(0)
    await dp1.ssd.commit() // what the guest's fsync waits for
    expect(fs.readFileSync(abs('vm.img')).equals(A1)).toBe(false)
    const dp2 = datapath(dpOptions(store, ssd))
    const e2 = await attach(dp2, store, 'vm.img')
    expect(imageStats(dp2, 'vm.img').dirtyBlocks).toBe(dirty)
    expect((await readAll(dp2, e2, A.length)).equals(A1)).toBe(true) // before its scan is done too
    expect(logs.some((l) => new RegExp(`image vm\\.img: no clean-unmount record .*\\d+ clean cached block\\(s\\) dropped, ${dirty} unwritten block\\(s\\) kept`).test(l)), logs.join('\n')).toBe(true)
    const s = await warm(dp2, 'vm.img')
    expect(s.scan.restored).toBe(false)
    expect(s.mapClasses).toEqual(insA1.counts)
    expect(await dp2.destageCommand()).toEqual([{ path: 'vm.img', blocks: dirty }])
    expect(fs.readFileSync(abs('vm.img')).equals(A1)).toBe(true)
    dp2.release(e2)
    await closeDp(dp2)
    const f = fsck(abs('vm.img'))
    expect(f.status, f.out).toBe(0)
  })

  it('an image changed on the HDD behind the store\'s back while it holds dirty blocks of it is refused; others are served', async () => {
    const { store, ssd, abs } = newStore({ 'vm.img': '', 'other.img': '' })
    const dp1 = new Datapath(dpOptions(store, ssd)) // never closed
    const e1 = await attach(dp1, store, 'vm.img')
    await warm(dp1, 'vm.img')
    await replay(dp1, e1, A, A1, (b) => mapA.classOf(b))
    await dp1.ssd.commit()
    const fd = fs.openSync(abs('vm.img'), 'r+')
    fs.writeSync(fd, Buffer.alloc(512, 0xcd), 0, 512, 0) // the boot area: another tool's write
    fs.closeSync(fd)
    const dp2 = datapath(dpOptions(store, ssd))
    const refusal = /image vm\.img changed on the HDD behind the SSD store's back .*recover --apply .*vm\.img.*--discard/
    await expect(dp2.attach('vm.img', abs('vm.img'))).rejects.toThrow(ImageRefused)
    await expect(dp2.attach('vm.img', abs('vm.img'))).rejects.toThrow(refusal)
    expect(dp2.refused.has(abs('vm.img'))).toBe(true)
    expect(dp2.stats().refused).toEqual(['vm.img'])
    expect(dp2.images()).toEqual([])
    const o = await attach(dp2, store, 'other.img')
    await warm(dp2, 'other.img')
    await randomReads(dp2, o, A, 50, 13)
  })
})

describe('the last close', () => {
  it('destages everything in the background; a reopen finds the same entry; a rewrite on the HDD while closed is scanned afresh', async () => {
    const { store, ssd, abs } = newStore()
    const dp = datapath(dpOptions(store, ssd))
    const e = await attach(dp, store, 'vm.img')
    await warm(dp, 'vm.img')
    await replay(dp, e, A, A1, (b) => mapA.classOf(b))
    const dirty = imageStats(dp, 'vm.img').dirtyBlocks
    expect(dirty).toBeGreaterThan(0)
    dp.release(e) // no background tick in these tests: only the last close destages
    await until(() => {
      const s = imageStats(dp, 'vm.img')
      return s.dirtyBlocks === 0 && s.destaged >= dirty
    }, 10_000, 'the destage after the last close')
    expect(fs.readFileSync(abs('vm.img')).equals(A1)).toBe(true)
    expect(dp.images().map((i) => i.rel)).toEqual(['vm.img']) // still attached: the map stays warm
    const again = await attach(dp, store, 'vm.img')
    expect(again).toBe(e)
    expect((await readAll(dp, again, A.length)).equals(A1)).toBe(true)
    dp.release(again)
    await new Promise((r) => setTimeout(r, 50))
    // Another tool rewrites the file while no handle has it open: a reopen drops the map and scans again.
    fs.writeFileSync(abs('vm.img'), A2)
    const e2 = await attach(dp, store, 'vm.img')
    expect(e2).not.toBe(e)
    const s = await warm(dp, 'vm.img')
    expect(s.mapClasses).toEqual(insA2.counts)
    expect((await readAll(dp, e2, A.length)).equals(A2)).toBe(true)
    expect(logs.some((l) => /image vm\.img: changed on the HDD while closed/.test(l)), logs.join('\n')).toBe(true)
  })
})

describe('random reads and writes', () => {
  it('1,500 of them (meta-data too: garbage for the live map) agree with a shadow; destage, close and a restart keep every byte', async () => {
    const { store, ssd, abs } = newStore()
    const opts = dpOptions(store, ssd, { ramBytes: 256 << 10, newDataBytes: 8 << 20, smallFileBytes: 32 << 10 })
    const dp = datapath(opts)
    const e = await attach(dp, store, 'vm.img')
    await warm(dp, 'vm.img')
    const r = rng(20261205)
    let sh = Buffer.from(A)
    let writes = 0
    for (let i = 0; i < 1500; i++) {
      const x = r()
      // Half of them in the first 2 MiB: superblock, descriptors, bitmaps, inode tables.
      const pos = Math.floor(r() * (r() < 0.5 ? 2 << 20 : sh.length + 64 * 1024))
      const len = 1 + Math.floor(r() * (r() < 0.8 ? 6000 : 70_000))
      if (x < 0.5) {
        const got = await readVia(dp, e, pos, len)
        const want = sh.subarray(Math.min(pos, sh.length), Math.min(pos + len, sh.length))
        if (!got.equals(want)) throw new Error(`op ${i}: read of ${len} bytes at ${pos} differs from the shadow`)
      } else if (x < 0.97) {
        const data = seededBytes(Math.floor(r() * 0x7fffffff), len)
        await writeVia(dp, e, pos, data)
        if (pos + len > sh.length) sh = Buffer.concat([sh, Buffer.alloc(pos + len - sh.length)])
        data.copy(sh, pos)
        writes++
      } else {
        await dp.destageCommand('vm.img')
        expect(imageStats(dp, 'vm.img').dirtyBlocks).toBe(0)
      }
      expect(imageStats(dp, 'vm.img').fileBytes).toBe(sh.length)
    }
    expect(writes).toBeGreaterThan(600)
    const s = imageStats(dp, 'vm.img')
    expect(s.destaged).toBeGreaterThan(0)
    expect(Object.values(s.classes).reduce((a, c) => a + c.redirected, 0)).toBeGreaterThan(0)
    expect((await readAll(dp, e, sh.length)).equals(sh)).toBe(true)
    dp.release(e)
    await closeDp(dp)
    expect(fs.readFileSync(abs('vm.img')).equals(sh)).toBe(true)
    const dp2 = datapath(opts)
    const e2 = await attach(dp2, store, 'vm.img')
    expect((await readAll(dp2, e2, sh.length)).equals(sh)).toBe(true)
  })
})

describe('names and sizes', () => {
  it('a rename moves the image with its held blocks; an unlink forgets it once released', async () => {
    const { store, ssd, abs } = newStore()
    const dp = datapath(dpOptions(store, ssd))
    const e = await attach(dp, store, 'vm.img')
    await warm(dp, 'vm.img')
    await replay(dp, e, A, A1, (b) => mapA.classOf(b))
    const dirty = imageStats(dp, 'vm.img').dirtyBlocks
    expect(dirty).toBeGreaterThan(0)
    fs.renameSync(abs('vm.img'), abs('y.img'))
    dp.renamed(abs('vm.img'), abs('y.img'), 'y.img')
    expect(dp.images().map((i) => i.rel)).toEqual(['y.img'])
    expect(dp.stats().images.map((i) => i.path)).toEqual(['y.img'])
    expect(imageStats(dp, 'y.img').dirtyBlocks).toBe(dirty)
    await expect(dp.destageCommand('vm.img')).rejects.toThrow(/no image vm\.img is attached/)
    expect((await readAll(dp, e, A.length)).equals(A1)).toBe(true)
    expect(await dp.destageCommand('y.img')).toEqual([{ path: 'y.img', blocks: dirty }])
    expect(fs.readFileSync(abs('y.img')).equals(A1)).toBe(true)
    // Dirty again, then unlinked while open: still served until released, then forgotten.
    await replay(dp, e, A1, A2, (b) => mapA.classOf(b))
    expect(imageStats(dp, 'y.img').dirtyBlocks).toBeGreaterThan(0)
    fs.unlinkSync(abs('y.img'))
    dp.unlinked(abs('y.img'))
    expect((await readVia(dp, e, 0, 2 * BLOCK)).equals(A2.subarray(0, 2 * BLOCK))).toBe(true)
    dp.release(e)
    await until(() => dp.images().length === 0, 10_000, 'the unlinked image to be forgotten')
    expect(dp.stats().ssd.heldBlocks).toBe(0)
    expect(dp.stats().ssd.dirtyBlocks).toBe(0)
    await closeDp(dp)
    // A new file at that path: the store holds nothing of the old one (else: a conflict, refused).
    fs.copyFileSync(imgA, abs('y.img'))
    const dp2 = datapath(dpOptions(store, ssd))
    const e2 = await attach(dp2, store, 'y.img')
    expect(imageStats(dp2, 'y.img').dirtyBlocks).toBe(0)
    expect((await readAll(dp2, e2, A.length)).equals(A)).toBe(true)
  })

  it('a truncate drops held blocks past the new end: growing again reads zeros, not the dropped bytes', async () => {
    const { store, ssd, abs } = newStore()
    const dp = datapath(dpOptions(store, ssd))
    const e = await attach(dp, store, 'vm.img')
    await warm(dp, 'vm.img')
    // A meta-data block far from the start, and one below the cut (both redirected).
    const runs = [...mapA.runs()].filter(([, , c]) => isMetadata(c))
    const far = runs.map(([s, n]) => s + n - 1).filter((b) => b >= 2048).pop()!
    expect(far).toBeDefined()
    const mark = seededBytes(906, BLOCK)
    await writeVia(dp, e, far * BLOCK, mark)
    await writeVia(dp, e, 100, mark.subarray(0, 200))
    expect(imageStats(dp, 'vm.img').dirtyBlocks).toBe(2)
    expect(await dp.truncated(abs('vm.img'), 4 << 20)).toBe(true)
    expect(fs.statSync(abs('vm.img')).size).toBe(4 << 20)
    const s = imageStats(dp, 'vm.img')
    expect(s.fileBytes).toBe(4 << 20)
    expect(s.dirtyBlocks).toBe(1)
    expect(await dp.read(e, Buffer.alloc(100), 100, 4 << 20)).toBe(0)
    expect(await dp.truncated(abs('vm.img'), A.length)).toBe(true)
    expect((await readVia(dp, e, far * BLOCK, BLOCK)).equals(Buffer.alloc(BLOCK))).toBe(true)
    expect((await readVia(dp, e, 100, 200)).equals(mark.subarray(0, 200))).toBe(true)
    expect(await dp.destageCommand()).toEqual([{ path: 'vm.img', blocks: 1 }])
    // A file the datapath does not serve: nothing to do.
    expect(await dp.truncated(abs('nothing.img'), 0)).toBe(false)
  })
})

describe('containers and partitions', () => {
  it('a qcow2 image is attached, mapped as inspect maps it, and read byte for byte', async () => {
    const { store, ssd, abs } = newStore({})
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=65536', imgA, abs('vm.qcow2')])
    const Q = fs.readFileSync(abs('vm.qcow2'))
    const dp = datapath(dpOptions(store, ssd))
    const e = await attach(dp, store, 'vm.qcow2')
    const s = await warm(dp, 'vm.qcow2')
    const ins = await inspectMap(abs('vm.qcow2'))
    expect(s.scan.format).toBe(ins.format)
    expect(s.scan.format).toMatch(/^qcow2/)
    expect(s.mapClasses).toEqual(ins.counts)
    expect(s.mapClasses.container).toBeGreaterThan(0)
    expect(s.mapClasses.directory).toBeGreaterThan(10)
    await randomReads(dp, e, Q, 300, 14)
    expect((await readAll(dp, e, Q.length)).equals(Q)).toBe(true)
  })

  it('an MBR disk whose ext4 partition starts at sector 63 (not 4 KiB aligned): mapped as inspect maps it; the guest\'s changes replayed through it keep every byte and reach the HDD file', async () => {
    const { store, ssd, abs } = newStore({})
    const at = 63 * 512
    const build = (fsImage: Buffer, file: string) => {
      fs.writeFileSync(file, Buffer.alloc(0))
      fs.truncateSync(file, at + fsImage.length + (1 << 20))
      execFileSync('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', file], { input: `label: dos\nlabel-id: 0x5eed0063\nstart=63, size=${fsImage.length / 512}, type=83\n`, stdio: ['pipe', 'ignore', 'pipe'] })
      const fd = fs.openSync(file, 'r+')
      fs.writeSync(fd, fsImage, 0, fsImage.length, at)
      fs.closeSync(fd)
    }
    build(A, abs('disk.raw'))
    const want1 = path.join(base, `disk-A1-${dirs}.raw`)
    build(A1, want1)
    const D = fs.readFileSync(abs('disk.raw'))
    const D1 = fs.readFileSync(want1)
    expect(D.subarray(0, 512).equals(D1.subarray(0, 512))).toBe(true) // the same partition table
    const dp = datapath(dpOptions(store, ssd))
    const e = await attach(dp, store, 'disk.raw')
    const s = await warm(dp, 'disk.raw')
    const ins = await inspectMap(abs('disk.raw'))
    expect(s.mapClasses).toEqual(ins.counts)
    expect(s.mapClasses['partition-table']).toBeGreaterThan(0)
    expect(s.mapClasses.directory).toBeGreaterThan(10)
    await randomReads(dp, e, D, 200, 15)
    // The changed fs blocks, each a 4 KiB write at an unaligned file offset (two file blocks).
    const changed = changedBlocks(A, A1)
    for (const k of [...changed.filter((k) => mapA.classOf(k) !== BlockClass.InodeTable), ...changed.filter((k) => mapA.classOf(k) === BlockClass.InodeTable)]) {
      await writeVia(dp, e, at + k * BLOCK, Buffer.from(blockOf(A1, k)))
    }
    expect(imageStats(dp, 'disk.raw').dirtyBlocks).toBeGreaterThan(0)
    expect(imageStats(dp, 'disk.raw').mapClasses).toEqual((await inspectMap(want1)).counts)
    expect((await readAll(dp, e, D.length)).equals(D1)).toBe(true)
    dp.release(e)
    await closeDp(dp)
    expect(fs.readFileSync(abs('disk.raw')).equals(D1)).toBe(true)
  })
})
