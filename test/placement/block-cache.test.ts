// Benchmark configuration (f), --cache-mode block-cache (src/placement/block-cache.ts):
// the policy alone (bcache's sequential cutoff, LRU of clean blocks, a cache full
// of dirty blocks); the router over a file against a shadow (write-back, destage,
// restart, bypass, a destage racing a bypassing write); and real mounts: random
// I/O through FUSE, a clean remount that keeps the SSD rows, a long sequential
// write that goes around the cache, and kill -9 after fsync.
import { execFileSync, spawnSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BlockCachePolicy, SEQUENTIAL_CUTOFF, SequentialCutoff } from '../../src/placement/block-cache'
import { plainDevice, type HddDevice } from '../../src/store/device'
import { BLOCK, blockKey, RamCache } from '../../src/store/ram'
import { SsdStore } from '../../src/store/ssd'
import { runCli } from '../helpers/cli'
import { destage, stats } from '../helpers/control'
import { mount, tmpdir } from '../helpers/mount'
import { rng } from '../helpers/rng'
import { openRouter } from '../helpers/router'
import { BlockClass } from '../../src/introspect/classes'

let base = ''
beforeAll(() => {
  base = tmpdir('vmdi-block-cache-')
})
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

const MiB = 1 << 20
/** Days: dirty blocks stay on the SSD store until a test destages them. */
const NO_BACKGROUND_DESTAGE = { VMDI_DESTAGE_INTERVAL_MS: String(24 * 3600 * 1000) }

describe('SequentialCutoff (bcache sequential_cutoff)', () => {
  it('blocks answered from RAM without a request continue the stream they extend, also from inside a block; covered bytes change nothing', () => {
    const c = new SequentialCutoff()
    // A request ends 2,848 bytes before a block boundary; the binding answers that block; the next request continues.
    expect(c.note(0, 128224, 0)).toBe(false)
    c.noteRange(126976, 131072, 0)
    c.noteRange(126976, 131072, 0) // again: covered
    for (let b = 32; b < 1023; b++) c.noteRange(b * 4096, (b + 1) * 4096, 0)
    expect(c.note(1023 * 4096, 4096, 0)).toBe(true) // the stream's 1,024th block: 4 MiB
    // A block elsewhere starts its own stream.
    c.noteRange(50 << 20, (50 << 20) + 4096, 0)
    expect(c.note((50 << 20) + 4096, 4096, 0)).toBe(false)
  })

  it('bypasses a stream once it has reached 4 MiB, not random requests; a gap or a pause of 5 s starts a new stream', () => {
    const c = new SequentialCutoff()
    const r = rng(3)
    for (let i = 0; i < 500; i++) expect(c.note(Math.floor(r() * 1e9), 128 << 10, 0)).toBe(false)
    // 128 KiB requests from 0: the 32nd brings the stream to 4 MiB.
    const seq = Array.from({ length: 40 }, (_, i) => c.note(i * (128 << 10), 128 << 10, 1000))
    expect(seq.indexOf(true)).toBe(SEQUENTIAL_CUTOFF / (128 << 10) - 1)
    expect(seq.slice(31).every(Boolean)).toBe(true)
    // A gap: a new stream.
    expect(c.note(40 * (128 << 10) + 4096, 128 << 10, 1000)).toBe(false)
    // Another stream interleaved with the first does not break it (several streams are tracked).
    expect(c.note(40 * (128 << 10), 128 << 10, 1000)).toBe(true)
    // A pause of over 5 s: the stream is forgotten.
    expect(c.note(41 * (128 << 10), 128 << 10, 7000)).toBe(false)
    // One request of 4 MiB is a stream of 4 MiB.
    expect(new SequentialCutoff().note(0, 4 * MiB)).toBe(true)
  })
})

describe('BlockCachePolicy', () => {
  const k = (b: number, image = 1) => blockKey(image, b)
  function policy(capacity: number) {
    const p = new BlockCachePolicy(capacity)
    const dropped: number[] = []
    // The ledger's side: a dropped clean row tells the policy, as ImageLedger.onRow does.
    for (const image of [1, 2])
      p.register(image, (b) => {
        dropped.push(blockKey(image, b))
        p.update(blockKey(image, b), null)
        return true
      })
    return { p, dropped }
  }

  it('admits into free room; when full evicts the least recently used clean block (hits refresh it), of any image', () => {
    const { p, dropped } = policy(3)
    for (const b of [1, 2, 3]) {
      expect(p.makeRoom(k(b))).toBe(true)
      p.update(k(b), 'clean')
    }
    expect(dropped).toEqual([])
    p.touch(k(1)) // 2 is now the least recently used
    expect(p.makeRoom(k(1, 2))).toBe(true)
    p.update(k(1, 2), 'clean')
    expect(dropped).toEqual([k(2)])
    expect(p.makeRoom(k(3))).toBe(true) // held already: nothing to evict
    expect(dropped).toEqual([k(2)])
    expect(p.size).toBe(3)
  })

  it('never evicts dirty blocks; all dirty: no room and nothing dropped; a destaged block becomes evictable', () => {
    const { p, dropped } = policy(3)
    p.update(k(1), 'dirty')
    p.update(k(2), 'clean')
    p.update(k(3), 'dirty')
    expect(p.makeRoom(k(4))).toBe(true) // the one clean block goes
    expect(dropped).toEqual([k(2)])
    p.update(k(4), 'dirty')
    expect(p.makeRoom(k(5))).toBe(false)
    expect(dropped).toEqual([k(2)])
    expect(p.makeRoom(k(1))).toBe(true) // a write to a held block needs no room
    p.update(k(3), 'clean') // destaged
    expect(p.makeRoom(k(5))).toBe(true)
    expect(dropped).toEqual([k(2), k(3)])
    expect(p.dirtyCount).toBe(2)
  })

  it('a cap lowered below what is held evicts several clean blocks at once', () => {
    const { p, dropped } = policy(2)
    for (const b of [1, 2, 3, 4]) p.update(k(b), 'clean')
    expect(p.makeRoom(k(9))).toBe(true)
    expect(dropped).toEqual([k(1), k(2), k(3)])
  })
})

/** A block-cache router over a file of `blocks` random blocks, its own SSD store, RAM and policy. */
function openCache(name: string, blocks: number, capBlocks: number, ramBlocks = 32, device?: (fd: number) => HddDevice) {
  const dir = path.join(base, name)
  fs.mkdirSync(dir, { recursive: true })
  const hdd = path.join(dir, 'hdd.img')
  const shadow = crypto.randomBytes(blocks * BLOCK)
  fs.writeFileSync(hdd, shadow)
  const ssdFile = path.join(dir, 'ssd.sqlite')
  const open = () => {
    const ssd = SsdStore.open(ssdFile)
    const fd = fs.openSync(hdd, 'r+')
    const policy = new BlockCachePolicy(capBlocks)
    // As the datapath: no new dirty block past the cap.
    const canRedirect = () => !ssd.failed && router.parts.state.held.dirtyCount < capBlocks
    const router = openRouter(fd, 1, new RamCache(ramBlocks * BLOCK), ssd, () => BlockClass.Data, { mode: 'block-cache', policy, device: device?.(fd), canRedirect })
    return { ssd, fd, policy, router, close: async () => (fs.closeSync(fd), await ssd.close()) }
  }
  return { hdd, shadow, open }
}

async function readAll(read: (b: Buffer, l: number, p: number) => Promise<number>, size: number, chunk = 60_000): Promise<Buffer> {
  const out = Buffer.alloc(size)
  for (let at = 0; at < size; at += chunk) await read(out.subarray(at), Math.min(chunk, size - at), at)
  return out
}

describe('BlockCacheRouter over a file', () => {
  it('random reads, writes, truncates and destages match a shadow; the LRU follows the rows; a restart keeps them; destage makes the HDD whole', async () => {
    const c = openCache('router', 1024, 128)
    let sh = Buffer.from(c.shadow)
    let o = c.open()
    const r = rng(11)
    for (let i = 0; i < 3000; i++) {
      const x = r()
      const pos = Math.floor(r() * (sh.length + 2 * BLOCK))
      const len = 1 + Math.floor(r() * (r() < 0.7 ? 6000 : 60000))
      if (x < 0.5) {
        const got = Buffer.alloc(len)
        const n = await o.router.read(got, len, pos)
        const want = sh.subarray(pos, pos + len)
        if (n !== want.length || !got.subarray(0, n).equals(want)) throw new Error(`op ${i}: read ${pos}+${len} differs from the shadow`)
      } else if (x < 0.93) {
        const data = crypto.randomBytes(len)
        await o.router.write(data, len, pos)
        if (pos + len > sh.length) sh = Buffer.concat([sh, Buffer.alloc(pos + len - sh.length)])
        data.copy(sh, pos)
      } else if (x < 0.94) {
        const to = Math.floor(sh.length * (0.8 + 0.2 * r()))
        await o.router.truncate(to)
        sh = Buffer.from(sh.subarray(0, to))
      } else if (x < 0.97) {
        await o.router.fsync()
      } else {
        await o.router.destage(1 + Math.floor(r() * 64))
      }
      // The policy mirrors the ledger, and the cap holds.
      expect(o.policy.size).toBe(o.router.present.size)
      expect(o.policy.dirtyCount).toBe(o.router.dirty.size)
      expect(o.policy.size).toBeLessThanOrEqual(128)
    }
    const st = o.router.stats.get(BlockClass.Data)!
    expect(st.redirected).toBeGreaterThan(100)
    expect(st.ssdHits).toBeGreaterThan(10)
    expect(st.ramHits).toBeGreaterThan(10)
    expect(o.router.counters.evicted).toBeGreaterThan(0)
    expect(o.router.counters.writeThrough).toBeGreaterThan(0) // the cache filled with dirty blocks now and then
    // Restart: the rows are there (dirty ones the latest bytes), in the new policy.
    await o.router.fsync()
    const held = o.router.present.size
    await o.close()
    o = c.open()
    expect(o.policy.size).toBe(held)
    expect((await readAll(o.router.read, sh.length)).equals(sh)).toBe(true)
    expect(o.router.stats.get(BlockClass.Data)!.ssdHits).toBeGreaterThan(0)
    // Destaged blocks stay as clean copies (a write-back cache keeps what it wrote).
    const dirty = o.router.dirty.size
    expect(dirty).toBeGreaterThan(0)
    while ((await o.router.destage()) > 0);
    expect(o.router.dirty.size).toBe(0)
    expect(o.router.present.size).toBeGreaterThanOrEqual(dirty)
    expect(fs.readFileSync(c.hdd).equals(sh)).toBe(true)
    await o.close()
  })

  it('all dirty: reads are not admitted, writes go through to the HDD', async () => {
    const c = openCache('full', 256, 16)
    const o = c.open()
    const sh = Buffer.from(c.shadow)
    for (let b = 0; b < 64; b += 2) {
      const data = crypto.randomBytes(BLOCK)
      await o.router.write(data, BLOCK, b * BLOCK)
      data.copy(sh, b * BLOCK)
    }
    expect(o.router.dirty.size).toBe(16)
    expect(o.router.counters.writeThrough).toBe(16)
    const hdd = fs.readFileSync(c.hdd)
    for (let b = 32; b < 64; b += 2) expect(hdd.subarray(b * BLOCK, (b + 1) * BLOCK).equals(sh.subarray(b * BLOCK, (b + 1) * BLOCK))).toBe(true)
    const got = Buffer.alloc(BLOCK)
    await o.router.read(got, BLOCK, 200 * BLOCK)
    expect(o.router.present.size).toBe(16) // not admitted
    expect((await readAll(o.router.read, sh.length)).equals(sh)).toBe(true)
    await o.close()
  })

  it('a sequential write past 4 MiB goes to the HDD at once; a random overwrite then a sequential one of the same blocks leaves no stale copy, a destage in flight included', async () => {
    const c = openCache('seq', 4096, 4096, 64) // 16 MiB
    const o = c.open()
    const sh = Buffer.from(c.shadow)
    const stream = async () => {
      const data = crypto.randomBytes(12 * MiB)
      for (let at = 0; at < data.length; at += 256 << 10) await o.router.write(data.subarray(at, at + (256 << 10)), 256 << 10, at)
      data.copy(sh, 0)
    }
    await stream()
    // The first 3.75 MiB were written back; from 4 MiB on the HDD has the bytes without a destage.
    expect(o.router.counters.bypassed).toBe((12 * MiB - (SEQUENTIAL_CUTOFF - (256 << 10))) / BLOCK)
    let hdd = fs.readFileSync(c.hdd)
    expect(hdd.subarray(4 * MiB, 12 * MiB).equals(sh.subarray(4 * MiB, 12 * MiB))).toBe(true)
    expect(hdd.subarray(0, MiB).equals(sh.subarray(0, MiB))).toBe(false)
    // Random writes (partial blocks too) into the bypassed range: written back, dirty.
    const r = rng(5)
    for (let i = 0; i < 200; i++) {
      const pos = 5 * MiB + Math.floor(r() * MiB)
      const data = crypto.randomBytes(1 + Math.floor(r() * 9000))
      await o.router.write(data, data.length, pos)
      data.copy(sh, pos)
    }
    expect(o.router.dirty.size).toBeGreaterThan(200)
    // Read them (RAM and SSD copies), then overwrite the range sequentially while a destage runs.
    expect((await readAll(o.router.read, sh.length)).equals(sh)).toBe(true)
    const destaging = o.router.destage()
    await stream()
    await destaging
    while ((await o.router.destage()) > 0);
    expect((await readAll(o.router.read, sh.length)).equals(sh)).toBe(true)
    hdd = fs.readFileSync(c.hdd)
    expect(hdd.equals(sh)).toBe(true)
    await o.close()
  })
})

describe('a bypassing write racing a destage', () => {
  it("waits for the destage's HDD write of the block's older copy: the HDD file ends with the newer bytes", async () => {
    // The destage's write of block 1100 is slow; the bypassing write of it comes while that one is in flight.
    let reached = () => undefined as void
    const inFlight = new Promise<void>((res) => (reached = res))
    const slow = (fd: number): HddDevice => {
      const dev = plainDevice(fd)
      const pwrite = dev.pwrite.bind(dev)
      dev.pwrite = async (buf, off, len, pos) => {
        if (pos === 1100 * BLOCK) {
          reached()
          await new Promise((r) => setTimeout(r, 200))
        }
        return pwrite(buf, off, len, pos)
      }
      return dev
    }
    const c = openCache('race', 2048, 2048, 32, slow)
    const o = c.open()
    for (let at = 0; at < 4 * MiB; at += MiB) await o.router.write(crypto.randomBytes(MiB), MiB, at) // a stream of 4 MiB
    while ((await o.router.destage()) > 0);
    const older = Buffer.alloc(BLOCK, 1)
    await o.router.write(older, BLOCK, 1100 * BLOCK) // written back: dirty
    expect(o.router.dirty.has(1100)).toBe(true)
    const destaging = o.router.destage()
    await inFlight
    const newer = crypto.randomBytes(MiB) // the stream's next request: bypassed, over block 1100
    await o.router.write(newer, MiB, 4 * MiB)
    await destaging
    expect(o.router.counters.bypassed).toBeGreaterThanOrEqual(256)
    const hdd = fs.readFileSync(c.hdd)
    expect(hdd.subarray(4 * MiB, 5 * MiB).equals(newer)).toBe(true)
    const got = Buffer.alloc(MiB)
    await o.router.read(got, MiB, 4 * MiB)
    expect(got.equals(newer)).toBe(true)
    await o.close()
  })
})

// --- real mounts -------------------------------------------------------------

function ext4(file: string, size: string): void {
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', file, size])
}

/** The dead daemon's mount goes (kill -9). */
function clearDead(mnt: string): void {
  spawnSync('fusermount', ['-u', '-z', mnt])
  spawnSync('umount', ['-l', mnt])
}

function mountDirs(name: string) {
  const dir = path.join(base, name)
  const store = path.join(dir, 'store')
  fs.mkdirSync(store, { recursive: true })
  const img = path.join(store, 'vm.img')
  ext4(img, '32M')
  return { store, img, mnt: path.join(dir, 'mnt'), args: ['--cache-mode', 'block-cache', '--ram-cache', '256K', '--ssd-max', '4M', '--ssd', path.join(dir, 'ssd.sqlite')] }
}

async function randomIo(fh: fs.promises.FileHandle, sh: Buffer, ops: number, seed: number, span = sh.length): Promise<void> {
  const r = rng(seed)
  for (let i = 0; i < ops; i++) {
    const pos = Math.floor(r() * (span - 70_000))
    const len = 1 + Math.floor(r() * 65_536)
    if (r() < 0.5) {
      const got = Buffer.alloc(len)
      await fh.read(got, 0, len, pos)
      if (!got.equals(sh.subarray(pos, pos + len))) throw new Error(`op ${i}: read ${pos}+${len} differs from the shadow`)
    } else {
      const data = crypto.randomBytes(len)
      await fh.write(data, 0, len, pos)
      data.copy(sh, pos)
    }
  }
}

describe('a block-cache mount', () => {
  it('serves random I/O exactly, writes back, destages, and keeps its SSD rows over a clean remount', async () => {
    const d = mountDirs('mount')
    const sh = fs.readFileSync(d.img)
    let m = await mount(d.store, d.mnt, d.args, NO_BACKGROUND_DESTAGE)
    try {
      expect(m.log()).toContain('block-cache mode (benchmark peer (f)): SSD block cache, LRU, 4 MiB sequential cutoff, write-back, no classes')
      const fh = await fs.promises.open(path.join(m.mnt, 'vm.img'), fs.constants.O_RDWR | fs.constants.O_DIRECT)
      await randomIo(fh, sh, 400, 21, 8 * MiB) // 8 MiB: more than the 4 MiB cache, evictions happen
      const st = stats(m.mnt)
      expect(st.mode).toBe('block-cache')
      const im = st.images[0]
      expect(im.scan.state).toBe('off')
      expect(im.classes.data.redirected).toBeGreaterThan(0)
      expect(im.classes.data.ssdHits).toBeGreaterThan(0)
      expect(im.dirtyBlocks).toBeGreaterThan(0)
      expect(st.ssd.heldBlocks).toBeLessThanOrEqual(st.ssd.capBlocks)
      expect(im.evicted).toBeGreaterThan(0)
      expect(fs.readFileSync(d.img).equals(sh)).toBe(false) // written back: the HDD file lags
      await fh.close() // the last close destages in the background; the command waits for all of it
      destage(m.mnt)
      expect(fs.readFileSync(d.img).equals(sh)).toBe(true)
    } finally {
      expect(await m.stop()).toBe(0)
    }
    expect(fs.readFileSync(d.img).equals(sh)).toBe(true)
    // The rows the store kept for the image (read from the store itself, between the mounts).
    const store = SsdStore.open(d.args[d.args.length - 1])
    const held = store.blocks(store.imageRecord(d.img)!.id).present
    expect(held.length).toBeGreaterThan(500)
    await store.close()
    // Remount, the file unchanged: the rows are used (RAM starts empty: each is an SSD hit).
    m = await mount(d.store, d.mnt, d.args, NO_BACKGROUND_DESTAGE)
    try {
      const fh = await fs.promises.open(path.join(m.mnt, 'vm.img'), fs.constants.O_RDONLY | fs.constants.O_DIRECT)
      const some = held.slice(0, 200)
      for (const b of some) {
        const got = Buffer.alloc(BLOCK)
        await fh.read(got, 0, BLOCK, b * BLOCK)
        expect(got.equals(sh.subarray(b * BLOCK, (b + 1) * BLOCK))).toBe(true)
      }
      await fh.close()
      const im = stats(m.mnt).images[0]
      expect(im.classes.data.ssdHits).toBe(some.length)
      expect(im.classes.data.hddReads).toBe(0)
      expect(fs.readFileSync(path.join(m.mnt, 'vm.img')).equals(sh)).toBe(true)
      await new Promise((r) => setTimeout(r, 100)) // the daemon's log lines, read while the test waited
      expect(m.log()).toContain('image vm.img: attached (known to the SSD store)')
      expect(m.log()).not.toMatch(/clean cached block\(s\) dropped|store copies dropped/)
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 60_000)

  it('kill -9 after fsync of written-back writes loses nothing: the remount serves them from the dirty rows and destages them', async () => {
    const d = mountDirs('kill')
    const sh = fs.readFileSync(d.img)
    let m = await mount(d.store, d.mnt, d.args, NO_BACKGROUND_DESTAGE)
    const fh = await fs.promises.open(path.join(m.mnt, 'vm.img'), fs.constants.O_RDWR | fs.constants.O_DIRECT)
    const r = rng(17)
    for (let i = 0; i < 200; i++) {
      const pos = Math.floor(r() * (2 * MiB))
      const data = crypto.randomBytes(1 + Math.floor(r() * 20_000))
      await fh.write(data, 0, data.length, pos)
      data.copy(sh, pos)
    }
    await fh.read(Buffer.alloc(MiB), 0, MiB, 3 * MiB) // clean copies too (admitted reads)
    await fh.sync()
    expect(stats(m.mnt).images[0].dirtyBlocks).toBeGreaterThan(100)
    m.proc.kill('SIGKILL') // with the file open: no destage after a last close
    await m.exited
    await fh.close().catch(() => undefined)
    clearDead(m.mnt)
    expect(fs.readFileSync(d.img).equals(sh)).toBe(false) // the written-back blocks are only on the SSD store
    // A mount that would not look in the SSD store refuses; the block cache's does not (it destages them).
    const env = { env: { ...process.env, VMDI_STATE_DIR: path.join(path.dirname(d.store), 'state') } }
    const conv = runCli(['-f', ...d.args.slice(2), '--cache-mode', 'conventional', d.store, d.mnt], env)
    expect(conv.status).toBe(1)
    expect(conv.stderr).toMatch(/still holds unwritten blocks of .*vm\.img \(\d+\).*mount once without --cache-mode conventional/)
    const bad = runCli(['-f', '--cache-mode', 'bcache', d.store, d.mnt], env)
    expect(bad.status).toBe(2)
    expect(bad.stderr).toMatch(/--cache-mode bcache is not a mode: use introspect \(the default\), conventional \(benchmark baseline\) or block-cache/)
    m = await mount(d.store, d.mnt, d.args, NO_BACKGROUND_DESTAGE)
    try {
      expect(fs.readFileSync(path.join(m.mnt, 'vm.img')).equals(sh)).toBe(true)
      destage(m.mnt)
      expect(fs.readFileSync(d.img).equals(sh)).toBe(true)
      await new Promise((res) => setTimeout(res, 100))
      expect(m.log()).toMatch(/image vm\.img: attached \(known to the SSD store, [1-9]\d* dirty block\(s\) to destage\)/)
      expect(m.log()).toMatch(/no clean-unmount record \(the last mount did not end cleanly\): \d+ clean cached block\(s\) dropped, [1-9]\d* unwritten block\(s\) kept/)
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 60_000)

  it('a long sequential write bypasses the cache: the HDD file has the bytes at once, no stale copy after a random then a sequential overwrite', async () => {
    const d = mountDirs('seq')
    const sh = fs.readFileSync(d.img)
    const m = await mount(d.store, d.mnt, d.args, NO_BACKGROUND_DESTAGE)
    try {
      const fh = await fs.promises.open(path.join(m.mnt, 'vm.img'), fs.constants.O_RDWR | fs.constants.O_DIRECT)
      const stream = async () => {
        const data = crypto.randomBytes(16 * MiB)
        for (let at = 0; at < data.length; at += 128 << 10) await fh.write(data, at, 128 << 10, 8 * MiB + at)
        data.copy(sh, 8 * MiB)
      }
      await stream()
      const hdd = fs.readFileSync(d.img)
      expect(hdd.subarray(12 * MiB, 24 * MiB).equals(sh.subarray(12 * MiB, 24 * MiB))).toBe(true)
      expect(stats(m.mnt).images[0].bypassed).toBeGreaterThanOrEqual((12 * MiB) / BLOCK)
      // Random overwrites in the bypassed range (written back, dirty), read back through RAM and the SSD store.
      const r = rng(8)
      for (let i = 0; i < 150; i++) {
        const pos = 14 * MiB + Math.floor(r() * (2 * MiB - 10_000))
        const data = crypto.randomBytes(1 + Math.floor(r() * 9000))
        await fh.write(data, 0, data.length, pos)
        data.copy(sh, pos)
      }
      expect(stats(m.mnt).images[0].dirtyBlocks).toBeGreaterThan(100)
      const check = async () => {
        const got = Buffer.alloc(16 * MiB)
        for (let at = 0; at < got.length; at += 64 << 10) await fh.read(got, at, 64 << 10, 8 * MiB + at)
        expect(got.equals(sh.subarray(8 * MiB, 24 * MiB))).toBe(true)
      }
      await check()
      // The same blocks overwritten by a sequential stream: its copies on the HDD, the dirty ones dropped.
      await stream()
      await check()
      destage(m.mnt)
      await check()
      await fh.close()
      expect(fs.readFileSync(d.img).equals(sh)).toBe(true)
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 60_000)
})

describe('(b) and (f) answer RAM hits on the libfuse threads, as (c) does', () => {
  for (const mode of ['conventional', 'block-cache']) {
    it(`--cache-mode ${mode}: re-reads are answered by the binding's RAM index; a sequential read keeps its read-ahead going between natively answered requests${mode === 'block-cache' ? '; the cutoff sees those requests' : ''}`, async () => {
      const d = mountDirs(`native-${mode}`)
      const sh = fs.readFileSync(d.img)
      const args = ['--cache-mode', mode, '--ram-cache', '64M', ...(mode === 'block-cache' ? ['--ssd-max', '64M', '--ssd', path.join(path.dirname(d.store), 'ssd.sqlite')] : [])]
      const m = await mount(d.store, d.mnt, args, NO_BACKGROUND_DESTAGE)
      const fh = await fs.promises.open(path.join(m.mnt, 'vm.img'), fs.constants.O_RDONLY | fs.constants.O_DIRECT)
      try {
        const buf = Buffer.alloc(128 << 10)
        // A sequential read of 16 MiB in 128 KiB requests: the window grows to 128 KiB, so a
        // request's successor is in RAM and answered natively; the next miss must still count as
        // sequential (its preceding block is cached) or the read-ahead would start over.
        for (let at = 0; at < 16 * MiB; at += buf.length) {
          await fh.read(buf, 0, buf.length, at)
          expect(buf.equals(sh.subarray(at, at + buf.length)), `bytes at ${at}`).toBe(true)
        }
        await new Promise((r) => setTimeout(r, 100)) // the drain of the binding's hits
        let im = stats(m.mnt).images[0]
        const seqNative = im.nativeRamHits
        // At least a third of the 4,096 blocks came from RAM without JavaScript (read-ahead kept up).
        expect(seqNative).toBeGreaterThan(4096 / 3)
        if (mode === 'block-cache') {
          // The stream (natively answered requests included) passed 4 MiB: the rest went around the SSD store.
          expect(im.bypassed).toBeGreaterThan(1000)
          expect(im.ssdBlocks).toBeLessThanOrEqual(1024)
        }
        // A re-read of the first MiB: RAM hits, all answered by the binding.
        for (let at = 0; at < MiB; at += buf.length) await fh.read(buf, 0, buf.length, at)
        await new Promise((r) => setTimeout(r, 100))
        im = stats(m.mnt).images[0]
        expect(im.nativeRamHits - seqNative).toBeGreaterThanOrEqual(256)
      } finally {
        await fh.close()
        expect(await m.stop()).toBe(0)
      }
    }, 60_000)
  }
})
