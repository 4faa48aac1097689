// The datapath's tiers and router against an in-memory shadow: random reads,
// writes (any offset and size, past EOF too), truncates, fsyncs and destages
// over an image file whose blocks are meta-data or data by a map, with RAM
// small enough to evict; then a "restart" (new SSD connection and router on
// the same files) keeps every write, and a full destage makes the HDD file
// byte-identical to the shadow.
import crypto from 'crypto'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BlockClass, isMetadata } from '../../src/introspect/classes'
import { ExtentMap } from '../../src/introspect/map/extent-map'
import { type HddDevice, plainDevice } from '../../src/store/device'
import { openRouter } from '../helpers/router'
import { BLOCK, blockKey, RamCache } from '../../src/store/ram'
import { SsdStore } from '../../src/store/ssd'
import { rng } from '../helpers/rng'

let dir = ''
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-router-'))
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))


describe('RamCache', () => {
  it('evicts the lowest class priority first, then the least recently used, and never holds more than its budget', () => {
    const ram = new RamCache(4 * BLOCK)
    const blk = (v: number) => Buffer.alloc(BLOCK, v)
    ram.set(blockKey(1, 0), blk(1), 4) // superblock-like
    ram.set(blockKey(1, 1), blk(2), 1) // journal-like
    ram.set(blockKey(1, 2), blk(3), 1)
    ram.set(blockKey(1, 3), blk(4), 3)
    const out = Buffer.alloc(BLOCK)
    expect(ram.get(blockKey(1, 1), out)).toBe(true) // 1,1 is now more recent than 1,2
    ram.set(blockKey(2, 0), blk(5), 3) // full: the oldest priority-1 block (1,2) goes
    expect(ram.has(blockKey(1, 2))).toBe(false)
    expect(ram.has(blockKey(1, 1))).toBe(true)
    ram.set(blockKey(2, 1), blk(6), 0) // lower than anything cached: not cached
    expect(ram.has(blockKey(2, 1))).toBe(false)
    expect(ram.stats.blocks).toBe(4)
    expect(ram.get(blockKey(2, 0), out) && out[0]).toBe(5)
    ram.dropImage(1)
    expect(ram.stats.blocks).toBe(1)
  })

  it("shares (--ram-floor): with fair floors a VM's large meta-data cannot push another VM's out; without them it does; data has no floor", () => {
    const blk = Buffer.alloc(BLOCK, 7)
    // Two images, 1,000 blocks of RAM. Image 1 walks its meta-data first and fills RAM.
    const run = (floors: boolean) => {
      const ram = new RamCache(1000 * BLOCK)
      if (floors) ram.floorOf = () => 500 // fair: 1,000 blocks over 2 images
      for (let b = 0; b < 1000; b++) ram.set(blockKey(1, b), blk, 2)
      // Image 2 then reads 3,000 meta-data blocks of its own (a find over a large tree).
      for (let b = 0; b < 3000; b++) ram.set(blockKey(2, b), blk, 2)
      return ram
    }
    const shared = run(true)
    expect(shared.countOf(1).metaBlocks).toBe(500)
    expect(shared.countOf(2).metaBlocks).toBe(500)
    expect(shared.stats.blocks).toBe(1000)
    // Image 2 went on evicting its own oldest blocks: its latest 500 are cached.
    expect(shared.has(blockKey(2, 2999)) && !shared.has(blockKey(2, 2499))).toBe(true)
    const unshared = run(false)
    expect(unshared.countOf(1).metaBlocks).toBe(0)
    expect(unshared.countOf(2).metaBlocks).toBe(1000)
    // Priority still comes first: image 2's data (priority 0) evicts nobody's meta-data, floor or not.
    for (let b = 0; b < 100; b++) shared.set(blockKey(2, 10_000 + b), blk, 0)
    expect(shared.countOf(1).metaBlocks).toBe(500)
    expect(shared.has(blockKey(2, 10_000))).toBe(false)
    // Image 1 dropped (say its VM's file was truncated), then walked again: it fills the free half,
    // then evicts its own oldest; image 2, at its floor, keeps all of its blocks.
    shared.dropImage(1)
    for (let b = 0; b < 800; b++) shared.set(blockKey(1, b), blk, 2)
    expect(shared.countOf(1).metaBlocks).toBe(500)
    expect(shared.countOf(2).metaBlocks).toBe(500)
    expect(shared.has(blockKey(1, 799)) && !shared.has(blockKey(1, 299))).toBe(true)
    expect(shared.countOf(1).blocks).toBe(500)
    // With a third image attached the fair floor shrinks (333 each): image 3 takes from both down to it.
    shared.floorOf = () => 333
    for (let b = 0; b < 400; b++) shared.set(blockKey(3, b), blk, 2)
    expect(shared.countOf(1).metaBlocks).toBeGreaterThanOrEqual(333)
    expect(shared.countOf(2).metaBlocks).toBeGreaterThanOrEqual(333)
    expect(shared.countOf(3).metaBlocks).toBe(1000 - shared.countOf(1).metaBlocks - shared.countOf(2).metaBlocks)
    expect(shared.countOf(3).metaBlocks).toBeGreaterThanOrEqual(333)
  })
})

describe('SsdStore', () => {
  it('reads its own pending writes, commits durably, and refuses a file that is not a store', async () => {
    const file = path.join(dir, 'ssd1.sqlite')
    const s = SsdStore.open(file)
    s.put(1, 7, Buffer.alloc(BLOCK, 9), BlockClass.Directory, true)
    expect(s.get(1, 7)?.data[0]).toBe(9) // before the worker has it
    await s.commit()
    expect(s.dirtyBlocks(1)).toEqual([7])
    s.markClean(1, 7)
    expect(s.dirtyBlocks(1)).toEqual([])
    await s.close()
    const again = SsdStore.open(file)
    expect(again.get(1, 7)).toMatchObject({ cls: BlockClass.Directory, dirty: false })
    await again.close()
    const bogus = path.join(dir, 'not-a-store.sqlite')
    fs.writeFileSync(bogus, 'this is not an SQLite database, it is a text file of some length '.repeat(200))
    expect(() => SsdStore.open(bogus)).toThrow(/SSD store .*not-a-store.sqlite is not usable: .*move it aside/)
  })
})

describe('ImageRouter', () => {
  it('20,000 random operations agree with a shadow; a restart keeps every write; destage makes the HDD file whole', async () => {
    const r = rng(20261125)
    const size0 = 2 << 20
    const hdd = path.join(dir, 'image.img')
    const shadow = crypto.randomBytes(size0)
    fs.writeFileSync(hdd, shadow)
    let sh = Buffer.from(shadow)
    // A third of the blocks are meta-data of assorted classes.
    const map = new ExtentMap()
    const classes = [BlockClass.Superblock, BlockClass.InodeTable, BlockClass.Directory, BlockClass.ExtentTree, BlockClass.Journal]
    for (let b = 0; b < 2 * (size0 / BLOCK); b++) if (r() < 0.33) map.set(b, 1 + Math.floor(r() * 3), classes[Math.floor(r() * classes.length)])
    const ssdFile = path.join(dir, 'ssd.sqlite')
    let ssd = SsdStore.open(ssdFile)
    const ram = new RamCache(64 * BLOCK) // far smaller than the meta-data: evictions happen
    let fd = fs.openSync(hdd, 'r+')
    let router = openRouter(fd, 1, ram, ssd, (b) => map.classOf(b))
    const ops = 20000
    let dirtyMax = 0
    let heldData = false
    for (let i = 0; i < ops; i++) {
      const x = r()
      const limit = sh.length + 3 * BLOCK
      const pos = Math.floor(r() * limit)
      const len = 1 + Math.floor(r() * (r() < 0.7 ? 5000 : 40000))
      if (x < 0.45) {
        const got = Buffer.alloc(len)
        const n = await router.read(got, len, pos)
        const want = sh.subarray(pos, pos + len)
        expect(n, `op ${i} read ${pos}+${len}`).toBe(want.length)
        if (!got.subarray(0, n).equals(want)) throw new Error(`op ${i}: read ${pos}+${len} differs from the shadow`)
      } else if (x < 0.9) {
        // A third of the writes come as new allocations (the datapath found their blocks free): data held back too.
        const data = crypto.randomBytes(len)
        await router.write(data, len, pos, r() < 0.33)
        dirtyMax = Math.max(dirtyMax, router.dirty.size)
        heldData ||= [...router.dirty].some((b) => !isMetadata(map.classOf(b)))
        if (pos + len > sh.length) sh = Buffer.concat([sh, Buffer.alloc(pos + len - sh.length)])
        data.copy(sh, pos)
      } else if (x < 0.93) {
        const to = Math.floor(r() * (sh.length + BLOCK))
        await router.truncate(to)
        sh = to <= sh.length ? Buffer.from(sh.subarray(0, to)) : Buffer.concat([sh, Buffer.alloc(to - sh.length)])
      } else if (x < 0.97) {
        await router.fsync()
      } else {
        await router.destage(1 + Math.floor(r() * 50))
      }
      expect(router.fileSize).toBe(sh.length)
    }
    expect(dirtyMax).toBeGreaterThan(10)
    expect(router.counters.absorbed).toBeGreaterThan(0)
    expect(heldData).toBe(true)
    // Every tier served (RAM is far smaller than the meta-data, so the SSD store answers too).
    const s = [...router.stats.values()].reduce((a, x) => ({ redirected: a.redirected + x.redirected, ramHits: a.ramHits + x.ramHits, ssdHits: a.ssdHits + x.ssdHits }), { redirected: 0, ramHits: 0, ssdHits: 0 })
    expect(s.redirected).toBeGreaterThan(0)
    expect(s.ramHits).toBeGreaterThan(0)
    expect(s.ssdHits).toBeGreaterThan(0)
    // Restart: everything fsync'ed is in the SSD store; a new router finds the dirty blocks again.
    await router.fsync()
    fs.closeSync(fd)
    await ssd.close()
    ssd = SsdStore.open(ssdFile)
    fd = fs.openSync(hdd, 'r+')
    router = openRouter(fd, 1, new RamCache(64 * BLOCK), ssd, (b) => map.classOf(b))
    const all = Buffer.alloc(sh.length)
    await router.read(all, sh.length, 0)
    expect(all.equals(sh)).toBe(true)
    // Destage everything: the HDD file alone is the image again.
    while (await router.destage(1000)) {
      /* until no dirty block is left */
    }
    expect(fs.readFileSync(hdd).equals(sh)).toBe(true)
    fs.closeSync(fd)
    await ssd.close()
  })
})

describe('ImageRouter destage', () => {
  it('two callers destaging "until a batch returns 0" at once leave no dirty block behind', async () => {
    // The daemon's destage after a last close, `vmdi-fuse destage` and unmount can overlap.
    const hdd = path.join(dir, 'overlap.img')
    fs.writeFileSync(hdd, Buffer.alloc(4 << 20))
    const map = new ExtentMap()
    map.set(0, 1024, BlockClass.Journal)
    const ssd = SsdStore.open(path.join(dir, 'overlap.sqlite'))
    const fd = fs.openSync(hdd, 'r+')
    const router = openRouter(fd, 1, new RamCache(256 * BLOCK), ssd, (b) => map.classOf(b))
    const want = crypto.randomBytes(1024 * BLOCK)
    await router.write(want, want.length, 0)
    expect(router.dirty.size).toBe(1024)
    // As Datapath.destageAll does: batches until one returns 0, or until told to stop.
    const untilZero = async (stop = () => false) => {
      while (!stop() && (await router.destage(64)) > 0) {
        /* next batch */
      }
    }
    // The destage after a last close has a batch in flight when the unmount comes: it stops
    // after that batch, and the unmount's own destage (its first batch picks the same blocks)
    // must still find every block that is left.
    let closing = false
    const afterClose = untilZero(() => closing)
    closing = true
    await Promise.all([untilZero(), afterClose])
    expect(router.dirty.size).toBe(0)
    expect(fs.readFileSync(hdd).subarray(0, want.length).equals(want)).toBe(true)
    expect(ssd.dirtyBlocks(1)).toEqual([])
    fs.closeSync(fd)
    await ssd.close()
  })
})

describe('ImageRouter: new data held back', () => {
  it('holds new allocations on the SSD store, serves them from there, and destages consecutive blocks in one write each', async () => {
    const hdd = path.join(dir, 'newdata.img')
    const orig = crypto.randomBytes(2048 * BLOCK)
    fs.writeFileSync(hdd, orig)
    const map = new ExtentMap()
    map.set(0, 16, BlockClass.InodeTable)
    const ssd = SsdStore.open(path.join(dir, 'newdata.sqlite'))
    const fd = fs.openSync(hdd, 'r+')
    const plain = plainDevice(fd)
    const writes: [number, number][] = []
    const dev: HddDevice = {
      pread: (b, o, l, p) => plain.pread(b, o, l, p),
      pwrite: (b, o, l, p) => {
        writes.push([p, l])
        return plain.pwrite(b, o, l, p)
      },
    }
    const router = openRouter(fd, 1, new RamCache(64 * BLOCK), ssd, (b) => map.classOf(b), { device: dev })
    const cur = Buffer.from(orig)
    const put = async (pos: number, len: number, absorb: boolean) => {
      const x = crypto.randomBytes(len)
      x.copy(cur, pos)
      await router.write(x, len, pos, absorb)
    }
    // 600 new blocks in 128 KiB writes from block 100, one partial new block, one plain data write.
    for (let b = 100; b < 700; b += 32) await put(b * BLOCK, Math.min(32, 700 - b) * BLOCK, true)
    await put(1000 * BLOCK + 512, 1000, true)
    await put(1500 * BLOCK, BLOCK, false)
    expect(writes.map(([p]) => p / BLOCK)).toEqual([1500]) // only the plain write reached the HDD
    expect(router.counters.absorbed).toBe(601)
    expect(router.dirty.size).toBe(601)
    const all = Buffer.alloc(cur.length)
    await router.read(all, all.length, 0)
    expect(all.equals(cur)).toBe(true)
    // Destage: runs of at most 256 blocks, one write each; the store keeps no copy of data blocks.
    writes.length = 0
    while (await router.destage(1024)) {
      /* until clean */
    }
    expect(writes).toEqual([
      [100 * BLOCK, 256 * BLOCK],
      [356 * BLOCK, 256 * BLOCK],
      [612 * BLOCK, 88 * BLOCK],
      [1000 * BLOCK, BLOCK],
    ])
    expect(router.dirty.size).toBe(0)
    // What the store holds now: the meta-data blocks the full read loaded, nothing else.
    expect([...router.present].sort((a, b) => a - b)).toEqual([...Array(16).keys()])
    await ssd.commit()
    expect(ssd.blocks(1).present.length).toBe(16)
    expect(fs.readFileSync(hdd).equals(cur)).toBe(true)
    fs.closeSync(fd)
    await ssd.close()
  })
})

describe('ImageRouter: what the scan read', () => {
  it('keeps copies only of blocks no write touched, adopts the meta-data among them, and honours its caps', async () => {
    const hdd = path.join(dir, 'kept.img')
    const orig = crypto.randomBytes(64 * BLOCK)
    fs.writeFileSync(hdd, orig)
    const map = new ExtentMap() // empty during the scan: every block is data
    const ssd = SsdStore.open(path.join(dir, 'kept.sqlite'))
    const fd = fs.openSync(hdd, 'r+')
    // A device whose writes and reads can be held, to put writes in flight around a scan read.
    const plain = plainDevice(fd)
    let holdWrite: Promise<void> | null = null
    let holdRead: Promise<void> | null = null
    const dev: HddDevice = {
      pread: async (b, o, l, p) => {
        if (holdRead) await holdRead
        return plain.pread(b, o, l, p)
      },
      pwrite: async (b, o, l, p) => {
        if (holdWrite) await holdWrite
        return plain.pwrite(b, o, l, p)
      },
    }
    const ram = new RamCache(256 * BLOCK)
    const router = openRouter(fd, 1, ram, ssd, (b) => map.classOf(b), { device: dev })
    router.keepScanReads(1 << 30)
    const cur = Buffer.from(orig)
    const put = (b: number, v: number) => {
      const x = Buffer.alloc(BLOCK, v)
      x.copy(cur, b * BLOCK)
      return router.write(x, BLOCK, b * BLOCK)
    }
    // A write of block 5 in flight when the scan reads: the scan may see the old bytes: not kept.
    let release: () => void = () => undefined
    holdWrite = new Promise((r) => (release = r))
    const w5 = put(5, 0x55)
    holdWrite = null
    const buf = Buffer.alloc(32 * BLOCK)
    // A write of block 9 that lands while the scan's read is held: not kept either.
    let releaseRead: () => void = () => undefined
    holdRead = new Promise((r) => (releaseRead = r))
    const r1 = router.readForScan(buf, buf.length, 0)
    holdRead = null
    await put(9, 0x99)
    releaseRead()
    await r1
    release()
    await w5
    // Block 7 written after the read: its copy is dropped.
    await put(7, 0x77)
    // A read that is not whole blocks keeps only the whole ones inside it.
    const part = Buffer.alloc(3 * BLOCK)
    await router.readForScan(part, part.length, 40 * BLOCK + 100)
    // The scan is done: blocks 0..31 and 40..43 are meta-data, 20..23 of a class not wanted.
    map.set(0, 32, BlockClass.InodeTable)
    map.set(20, 4, BlockClass.Journal)
    map.set(40, 4, BlockClass.Directory)
    const adopted = router.adoptScanReads((cls) => cls !== BlockClass.Journal)
    const want = [...Array(32).keys()].filter((b) => ![5, 7, 9, 20, 21, 22, 23].includes(b)).concat([41, 42])
    expect(adopted).toBe(want.length)
    expect(router.counters.scanKept).toBe(want.length)
    for (let b = 0; b < 64; b++) expect(router.present.has(b), `block ${b}`).toBe(want.includes(b))
    for (const b of want) {
      expect(ssd.get(1, b)!.data.equals(cur.subarray(b * BLOCK, (b + 1) * BLOCK)), `SSD copy of block ${b}`).toBe(true)
      const out = Buffer.alloc(BLOCK)
      expect(ram.get(blockKey(1, b), out) && out.equals(cur.subarray(b * BLOCK, (b + 1) * BLOCK)), `RAM copy of block ${b}`).toBe(true)
    }
    // Every read returns the latest bytes, kept or not.
    const all = Buffer.alloc(64 * BLOCK)
    await router.read(all, all.length, 0)
    expect(all.equals(cur)).toBe(true)
    // Adopted once: later scan reads keep nothing.
    await router.readForScan(Buffer.alloc(BLOCK), BLOCK, 50 * BLOCK)
    map.set(50, 1, BlockClass.Directory)
    expect(router.adoptScanReads()).toBe(0)
    // The byte cap and the adoption limit (the SSD store's cap).
    let cls2 = BlockClass.Data
    const r2 = openRouter(fd, 2, new RamCache(256 * BLOCK), ssd, () => cls2)
    r2.keepScanReads(4 * BLOCK)
    await r2.readForScan(Buffer.alloc(16 * BLOCK), 16 * BLOCK, 0)
    cls2 = BlockClass.Directory
    expect(r2.adoptScanReads(isMetadata, 3)).toBe(3)
    fs.closeSync(fd)
    await ssd.close()
  })
})

describe('ImageRouter: a restart with a warm SSD store', () => {
  it('refills RAM from the store, highest class priority first, until RAM is full; the latest writes, no zero blocks, no unwanted class', async () => {
    const n = 600 // more than one refill chunk
    const hdd = path.join(dir, 'refill.img')
    const cur = crypto.randomBytes(n * BLOCK)
    cur.fill(0, 3 * BLOCK, 4 * BLOCK) // block 3: all zeros
    fs.writeFileSync(hdd, cur)
    const map = new ExtentMap()
    map.set(0, 10, BlockClass.Superblock) // priority 4
    map.set(10, 10, BlockClass.Journal) // not wanted
    map.set(20, 500, BlockClass.InodeTable) // priority 3
    const ssdFile = path.join(dir, 'refill.sqlite')
    let ssd = SsdStore.open(ssdFile)
    const fd = fs.openSync(hdd, 'r+')
    const cls = (b: number) => map.classOf(b)
    const first = openRouter(fd, 1, new RamCache(1024 * BLOCK), ssd, cls)
    for (let b = 0; b < 520; b += 64) await first.preload(b, 64)
    // A write after the preload: its dirty copy is the one RAM must get after the restart.
    const w = Buffer.alloc(BLOCK, 0x42)
    w.copy(cur, 30 * BLOCK)
    await first.write(w, BLOCK, 30 * BLOCK)
    await ssd.close()
    ssd = SsdStore.open(ssdFile)
    const want = (c: BlockClass) => c !== BlockClass.Journal
    // RAM for 300 blocks: the 9 non-zero superblock blocks, then the lowest 291 inode-table blocks.
    const ram = new RamCache(300 * BLOCK)
    const again = openRouter(fd, 1, ram, ssd, cls)
    expect(again.present.size).toBe(520)
    expect(await again.refillRam(want)).toBe(300)
    expect(again.counters.ramRefilled).toBe(300)
    expect(ram.full).toBe(true)
    const out = Buffer.alloc(BLOCK)
    for (let b = 0; b < n; b++) {
      const inRam = ram.get(blockKey(1, b), out)
      const expected = (b < 10 && b !== 3) || (b >= 20 && b < 20 + 291)
      expect(inRam, `block ${b} in RAM`).toBe(expected)
      if (inRam) expect(out.equals(cur.subarray(b * BLOCK, (b + 1) * BLOCK)), `RAM copy of block ${b}`).toBe(true)
    }
    // Full: nothing more to do. With room, only what is missing is read.
    expect(await again.refillRam(want)).toBe(0)
    const big = new RamCache(2048 * BLOCK)
    const third = openRouter(fd, 1, big, ssd, cls)
    // Stop asked at the first yield: one chunk of 256 (the zero block among them not copied).
    expect(await third.refillRam(want, () => true)).toBe(255)
    expect(await third.refillRam(want)).toBe(509 - 255)
    fs.closeSync(fd)
    await ssd.close()
  })

  it('places small files\' data as meta-data: preloaded, served and refilled after all meta-data (zero blocks too), writes redirected; back to the HDD path when it becomes data', async () => {
    const hdd = path.join(dir, 'small.img')
    const cur = crypto.randomBytes(64 * BLOCK)
    cur.fill(0, 40 * BLOCK, 41 * BLOCK) // a zero block of a small file
    fs.writeFileSync(hdd, cur)
    const map = new ExtentMap()
    map.set(0, 8, BlockClass.InodeTable)
    map.set(32, 16, BlockClass.SmallFile)
    const ssdFile = path.join(dir, 'small.sqlite')
    let ssd = SsdStore.open(ssdFile)
    const fd = fs.openSync(hdd, 'r+')
    const cls = (b: number) => map.classOf(b)
    const first = openRouter(fd, 1, new RamCache(64 * BLOCK), ssd, cls)
    expect(await first.preload(0, 64)).toBe(8 + 16)
    // Every small-file block, the zero one included, is in RAM and read from there.
    const out = Buffer.alloc(16 * BLOCK)
    await first.read(out, out.length, 32 * BLOCK)
    expect(out.equals(cur.subarray(32 * BLOCK, 48 * BLOCK))).toBe(true)
    expect(first.stats.get(BlockClass.SmallFile)).toMatchObject({ reads: 16, ramHits: 16, hddReads: 0 })
    // A write to one is redirected: dirty in the store, the HDD file untouched.
    const w = Buffer.alloc(BLOCK, 0x77)
    await first.write(w, BLOCK, 33 * BLOCK)
    w.copy(cur, 33 * BLOCK)
    expect(first.dirty.has(33)).toBe(true)
    expect(first.stats.get(BlockClass.SmallFile)!.redirected).toBe(1)
    const onHdd = Buffer.alloc(BLOCK)
    fs.readSync(fd, onHdd, 0, BLOCK, 33 * BLOCK)
    expect(onHdd.equals(w)).toBe(false)
    await first.fsync()
    await ssd.close()
    // Restart with RAM for 20 blocks: the 8 inode-table blocks first, then the lowest 12 small-file blocks.
    ssd = SsdStore.open(ssdFile)
    const ram = new RamCache(20 * BLOCK)
    const again = openRouter(fd, 1, ram, ssd, cls)
    expect(await again.refillRam()).toBe(20)
    for (let b = 0; b < 64; b++) expect(ram.has(blockKey(1, b)), `block ${b}`).toBe(b < 8 || (b >= 32 && b < 44))
    // The file grew past the size: its blocks are data again; the dirty one stays authoritative until destaged.
    map.set(32, 16, BlockClass.Data)
    again.reclassified(32, 16, BlockClass.SmallFile, BlockClass.Data)
    expect(ram.has(blockKey(1, 34))).toBe(false)
    expect(again.present.has(34)).toBe(false)
    expect(again.dirty.has(33)).toBe(true)
    const one = Buffer.alloc(BLOCK)
    await again.read(one, BLOCK, 33 * BLOCK)
    expect(one.equals(w)).toBe(true)
    expect(await again.destage()).toBe(1)
    fs.readSync(fd, onHdd, 0, BLOCK, 33 * BLOCK)
    expect(onHdd.equals(w)).toBe(true)
    fs.closeSync(fd)
    await ssd.close()
  })

  it('counts the loads of partial-block writes apart (rmwLoads), never as hits of reads that did not happen', async () => {
    const hdd = path.join(dir, 'rmw.img')
    fs.writeFileSync(hdd, crypto.randomBytes(16 * BLOCK))
    const map = new ExtentMap()
    map.set(0, 16, BlockClass.SmallFile)
    const ssd = SsdStore.open(path.join(dir, 'rmw.sqlite'))
    const fd = fs.openSync(hdd, 'r+')
    const r = openRouter(fd, 1, new RamCache(64 * BLOCK), ssd, (b) => map.classOf(b))
    // 16 partial writes to blocks never read: the rest of each block comes from the HDD; 16 more to the same blocks: from RAM.
    const w = Buffer.alloc(512, 0x55)
    for (let b = 0; b < 16; b++) await r.write(w, 512, b * BLOCK)
    for (let b = 0; b < 16; b++) await r.write(w, 512, b * BLOCK + 1024)
    const one = Buffer.alloc(BLOCK)
    await r.read(one, BLOCK, 0)
    const st = r.stats.get(BlockClass.SmallFile)!
    expect(st).toMatchObject({ reads: 1, ramHits: 1, ssdHits: 0, hddReads: 0, writes: 32, redirected: 32, rmwLoads: 32 })
    expect(st.ramHits + st.ssdHits + st.hddReads).toBeLessThanOrEqual(st.reads)
    fs.closeSync(fd)
    await ssd.close()
  })
})
