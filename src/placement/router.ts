// The per-image router (DESIGN.md, src/placement): splits each request into
// 4 KiB blocks of the image file, asks the class of each, and serves
// meta-data from RAM, then the SSD store, then the HDD file (keeping what it
// read on both), while data goes straight to the HDD file in coalesced
// pread/pwrite. Meta-data writes are redirected: RAM and the SSD store, marked
// dirty, never the HDD until destage. Small and boot files' data, when the
// mount places it with the meta-data (--small-files, --boot-files), is routed
// exactly like meta-data: "meta-data" below means every fast-tier class
// (isFastTier). So are data writes the caller found newly allocated
// (--new-data: `absorb`), which then stay dirty, and routed so, until destaged.
//
// The one invariant everything here keeps (read-your-writes): a block has
// exactly one authoritative copy, the SSD store's when it holds a dirty copy
// (`dirty` mirrors which blocks do), the HDD file's otherwise. A block with a
// dirty copy is routed as meta-data whatever its class says now, so a stale
// HDD copy can never win; RAM and clean SSD copies are only ever copies of
// the authority: a write that goes to the HDD drops them first.
//
// Concurrency (all on the Node main thread, but requests interleave at every
// await): meta-data-routed writes of one block run one at a time (`lock`), so
// a partial write's read-modify-write never loses a concurrent write; a load
// or destage that read a block before a write to it landed never caches or
// cleans what it read (`watch`).

import fs from 'fs'
import { BlockClass, isFastData, isFastTier, priorityOf } from '../introspect/classes'
import { BLOCK, blockKey, type RamCache } from '../store/ram'
import type { SsdStore } from '../store/ssd'

export interface ClassStats {
  reads: number
  ramHits: number
  ssdHits: number
  hddReads: number
  writes: number
  redirected: number
}

export interface RouterCounters {
  /** Blocks written back to the HDD file. */
  destaged: number
  /** Data-routed writes to blocks a later map update made meta-data. */
  deferred: number
  /** Blocks that became meta-data after a map update (copied to the SSD store and RAM on first use or preload). */
  promoted: number
  /** Class changes applied from map updates. */
  reclassified: number
  /** Meta-data writes sent to the HDD because the SSD store could not take them (failed or full). */
  writeThrough: number
  /** Meta-data blocks copied in by preload (warm start), those the scan had read included. */
  preloaded: number
  /** Of those, blocks taken from what the scan read (not read again). */
  scanKept: number
  /** Meta-data blocks copied into RAM from the SSD store at attach (a restart with a warm store). */
  ramRefilled: number
  /** Data blocks read ahead into RAM for sequential readers. */
  readAhead: number
  /** Meta-data blocks the binding served from RAM on the libfuse thread (also counted as RAM hits). */
  nativeRamHits: number
  /** Data blocks of new allocations written to the SSD store instead of the HDD (held back until destaged). */
  absorbed: number
}

export interface RouterOptions {
  /** Whether meta-data writes may go to the SSD store now (false: failed or over its cap). */
  canRedirect?: () => boolean
  /**
   * Called with the new first 4 KiB of the file before any write of them reaches the HDD
   * file (the image's identity signature follows our own writes); awaited.
   */
  onBlockZero?: (bytes: Buffer) => Promise<void>
  /** The HDD file's device (default: the plain file). */
  device?: HddDevice
  /**
   * Once the SSD store has failed: resolves when the owner has written what the
   * store held back to the HDD files (until then its unwritten batches are the
   * only copy of those blocks). An fsync waits for it.
   */
  ssdFailover?: () => Promise<void>
  /**
   * The conventional array (benchmark configuration (b)): no classes, no SSD; the
   * RAM budget is a plain LRU of every block read or written, filled with
   * Linux-style sequential read-ahead; writes go through to the HDD.
   */
  conventional?: boolean
}

/** Read-ahead of the conventional mode, in blocks: Linux's initial and maximum window (128 KiB). */
const RA_MIN = 4
const RA_MAX = 32

/** The HDD file as a device: the plain file, or the file behind an emulated disk (--emulate-hdd). */
export interface HddDevice {
  pread(buf: Buffer, off: number, len: number, pos: number): Promise<number>
  pwrite(buf: Buffer, off: number, len: number, pos: number): Promise<number>
}

export function plainDevice(fd: number): HddDevice {
  return {
    pread: (buf, off, len, pos) => new Promise((res, rej) => fs.read(fd, buf, off, len, pos, (e, n) => (e ? rej(e) : res(n)))),
    pwrite: (buf, off, len, pos) => new Promise((res, rej) => fs.write(fd, buf, off, len, pos, (e, n) => (e ? rej(e) : res(n)))),
  }
}

/** Reads exactly len bytes or up to EOF; the rest of buf[off..off+len) is zeroed. */
async function preadFull(dev: HddDevice, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  let done = 0
  while (done < len) {
    const n = await dev.pread(buf, off + done, len - done, pos + done)
    if (n === 0) break
    done += n
  }
  buf.fill(0, off + done, off + len)
  return done
}

async function pwriteFull(dev: HddDevice, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  let done = 0
  while (done < len) done += await dev.pwrite(buf, off + done, len - done, pos + done)
}

function fdatasync(fd: number): Promise<void> {
  return new Promise<void>((res, rej) => fs.fdatasync(fd, (e) => (e ? rej(e) : res())))
}

const ZERO_BLOCK = Buffer.alloc(BLOCK)

/** Copies the part of 4 KiB block b (in blk) that falls inside the request [pos, pos+n) into buf. */
function copyPart(blk: Buffer, b: number, buf: Buffer, pos: number, n: number): void {
  const lo = Math.max(pos, b * BLOCK)
  const hi = Math.min(pos + n, (b + 1) * BLOCK)
  blk.copy(buf, lo - pos, lo - b * BLOCK, hi - b * BLOCK)
}

/**
 * Whether a copy goes to RAM when the store takes it (preload, refill): all-zero
 * meta-data blocks (unused inode-table space, empty bitmaps) stay on the SSD
 * store only, RAM is kept for what lookups read; small and boot files' data
 * goes in whatever its bytes (a zero block of a file is read like any other).
 */
function ramWorthy(cls: BlockClass, blk: Buffer): boolean {
  return isFastData(cls) || !blk.equals(ZERO_BLOCK)
}

/** Longest destage write, in blocks (1 MiB). */
const DESTAGE_RUN = 256

/** RAM refill from the SSD store: point reads between yields to guest requests. */
const REFILL_CHUNK = 256

/** Data-routed writes remembered for the deferred count (oldest forgotten past this). */
const RECENT_DATA_MAX = 65536

export class ImageRouter {
  /** Blocks whose authoritative copy is a dirty one in the SSD store. */
  readonly dirty: Set<number>
  /** Blocks the SSD store holds a copy of (clean or dirty). */
  readonly present: Set<number>
  readonly stats = new Map<BlockClass, ClassStats>()
  readonly counters: RouterCounters = { destaged: 0, deferred: 0, promoted: 0, reclassified: 0, writeThrough: 0, preloaded: 0, scanKept: 0, ramRefilled: 0, readAhead: 0, nativeRamHits: 0, absorbed: 0 }
  private size: number
  private readonly locks = new Map<number, Promise<void>>()
  private readonly watched = new Map<number, { n: number; written: boolean }>()
  private readonly hddWrites = new Map<number, number>()
  private readonly recentData = new Set<number>()
  private readonly canRedirect: () => boolean
  private readonly onBlockZero: ((bytes: Buffer) => Promise<void>) | null
  private readonly ssdFailover: () => Promise<void>
  /** Last time a guest request arrived (background work yields to guest I/O). */
  lastGuestIo = 0
  private readonly dev: HddDevice
  private readonly conventional: boolean
  /** Conventional read-ahead: where the last read ended, and the current window. */
  private raNext = -1
  private raWindow = RA_MIN
  /** The destage batch running now (batches run one at a time). */
  private destaging: Promise<unknown> = Promise.resolve()
  /**
   * Copies of the blocks the scan read, kept until the preload adopts the
   * meta-data among them (warm start without reading them twice); any write
   * of a block drops its copy (`touched`).
   */
  private scanKept: Map<number, Buffer> | null = null
  private scanKeptMax = 0

  constructor(
    private readonly fd: number,
    readonly image: number,
    private readonly ram: RamCache,
    private readonly ssd: SsdStore,
    private classOf: (block: number) => BlockClass,
    opts: RouterOptions = {},
  ) {
    this.size = fs.fstatSync(fd).size
    const held = ssd.blocks(image)
    this.dirty = new Set(held.dirty)
    this.present = new Set(held.present)
    this.canRedirect = opts.canRedirect ?? (() => !ssd.failed)
    this.onBlockZero = opts.onBlockZero ?? null
    this.ssdFailover = opts.ssdFailover ?? (() => Promise.resolve())
    this.dev = opts.device ?? plainDevice(fd)
    this.conventional = opts.conventional ?? false
  }

  private stat(cls: BlockClass): ClassStats {
    let s = this.stats.get(cls)
    if (!s) this.stats.set(cls, (s = { reads: 0, ramHits: 0, ssdHits: 0, hddReads: 0, writes: 0, redirected: 0 }))
    return s
  }

  private routedAsMeta(b: number, cls: BlockClass): boolean {
    return isFastTier(cls) || this.dirty.has(b)
  }

  private watch(b: number): { n: number; written: boolean } {
    let w = this.watched.get(b)
    if (!w) this.watched.set(b, (w = { n: 0, written: false }))
    w.n++
    // A write of it to the HDD still in flight: what a read returns now may be older.
    if (this.hddWrites.has(b)) w.written = true
    return w
  }

  /** HDD writes of block b in flight (a read racing one must not cache what it read). */
  private beginHddWrite(b: number): void {
    this.hddWrites.set(b, (this.hddWrites.get(b) ?? 0) + 1)
    this.touched(b)
  }

  private endHddWrite(b: number): void {
    const n = (this.hddWrites.get(b) ?? 1) - 1
    if (n > 0) this.hddWrites.set(b, n)
    else this.hddWrites.delete(b)
    this.touched(b)
  }

  private unwatch(b: number, w: { n: number; written: boolean }): void {
    if (--w.n === 0 && this.watched.get(b) === w) this.watched.delete(b)
  }

  private touched(b: number): void {
    const w = this.watched.get(b)
    if (w) w.written = true
    this.scanKept?.delete(b)
  }

  /** Runs fn with block b's lock held (meta-data writes and write-backs of one block, one at a time). */
  private withLock<T>(b: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(b)
    const run = prev ? prev.then(fn) : fn()
    const tail = run.then(
      () => undefined,
      () => undefined,
    )
    this.locks.set(b, tail)
    void tail.then(() => {
      if (this.locks.get(b) === tail) this.locks.delete(b)
    })
    return run
  }

  /** Drops the copies of a block whose authority is (now) the HDD file. */
  private dropCopies(b: number): void {
    this.ram.delete(blockKey(this.image, b))
    if (this.present.has(b) && !this.dirty.has(b)) {
      this.present.delete(b)
      if (!this.ssd.failed) this.ssd.delete(this.image, b)
    }
  }

  /** The current bytes of one meta-data-routed block: RAM, then SSD, then HDD (kept on both). */
  private async loadBlock(b: number, cls: BlockClass, into: Buffer): Promise<void> {
    const key = blockKey(this.image, b)
    const st = this.stat(cls)
    if (this.ram.get(key, into)) {
      st.ramHits++
      return
    }
    if (this.present.has(b)) {
      const s = this.ssd.get(this.image, b)
      if (s) {
        s.data.copy(into, 0, 0, BLOCK)
        this.ram.set(key, into, priorityOf(cls), true)
        st.ssdHits++
        return
      }
      this.present.delete(b)
    }
    const w = this.watch(b)
    try {
      await preadFull(this.dev, into, 0, BLOCK, b * BLOCK)
      st.hddReads++
      // A write that landed meanwhile made what we read stale: return it, keep nothing.
      if (w.written || this.dirty.has(b)) {
        if (this.dirty.has(b) || this.ram.has(key)) return this.loadBlock(b, cls, into)
        return
      }
      this.ram.set(key, into, priorityOf(cls), true)
      if (isFastTier(cls) && this.canRedirect()) {
        this.ssd.put(this.image, b, into, cls, false)
        this.present.add(b)
      }
    } finally {
      this.unwatch(b, w)
    }
  }

  /** A block of a guest read the binding answered from RAM on its own (counted later, in batches). */
  servedFromRam(b: number, at: number): void {
    const st = this.stat(this.classOf(b))
    st.reads++
    st.ramHits++
    this.counters.nativeRamHits++
    if (at > this.lastGuestIo) this.lastGuestIo = at
  }

  /** `guest` false: the mount's own reads (scans), kept out of the guest's stats and idle clock. */
  async read(buf: Buffer, len: number, pos: number, guest = true): Promise<number> {
    if (guest) this.lastGuestIo = Date.now()
    const n = Math.max(0, Math.min(len, this.size - pos))
    if (n === 0) return 0
    if (this.conventional) return this.readConventional(buf, n, pos)
    // Sequential data reads get Linux-style read-ahead into RAM at the lowest priority:
    // it never displaces meta-data, and uses what the budget has left, as an array would.
    const firstBlock = Math.floor(pos / BLOCK)
    const lastBlock = Math.floor((pos + n - 1) / BLOCK)
    let sequential = false
    if (guest) {
      sequential = firstBlock === this.raNext || firstBlock === this.raNext - 1
      this.raWindow = sequential ? Math.min(RA_MAX, this.raWindow * 2) : RA_MIN
      this.raNext = lastBlock + 1
    }
    let runStart = -1 // data run: first byte position
    let runLen = 0
    const flushRun = async (readAhead: boolean) => {
      if (!runLen) return
      const s0 = runStart
      const l0 = runLen
      runLen = 0
      runStart = -1
      // The blocks after the request that are data, not cached and wholly inside the file.
      const from = lastBlock + 1
      let to = from
      if (readAhead) {
        const fileBlocks = Math.floor(this.size / BLOCK)
        while (to < from + this.raWindow && to < fileBlocks && !this.routedAsMeta(to, this.classOf(to)) && !this.ram.has(blockKey(this.image, to))) to++
      }
      if (to === from) {
        await preadFull(this.dev, buf, s0 - pos, l0, s0)
        return
      }
      const ws = new Map<number, { n: number; written: boolean }>()
      for (let k = from; k < to; k++) ws.set(k, this.watch(k))
      try {
        const chunk = Buffer.allocUnsafe(to * BLOCK - s0)
        await preadFull(this.dev, chunk, 0, chunk.length, s0)
        chunk.copy(buf, s0 - pos, 0, l0)
        for (let k = from; k < to; k++) {
          if (ws.get(k)!.written || this.routedAsMeta(k, this.classOf(k))) continue
          const at = k * BLOCK - s0
          this.ram.set(blockKey(this.image, k), chunk.subarray(at, at + BLOCK), 0)
          this.counters.readAhead++
        }
      } finally {
        for (const [k, w] of ws) this.unwatch(k, w)
      }
    }
    let tmp: Buffer | null = null
    for (let at = pos; at < pos + n; ) {
      const b = Math.floor(at / BLOCK)
      const end = Math.min((b + 1) * BLOCK, pos + n)
      const cls = this.classOf(b)
      const st = this.stat(cls)
      st.reads++
      if (!this.routedAsMeta(b, cls)) {
        // A read-ahead copy, if RAM has one (get, not has: the copy can go at any await).
        tmp ??= Buffer.allocUnsafe(BLOCK)
        if (runLen === 0 && this.ram.get(blockKey(this.image, b), tmp)) {
          tmp.copy(buf, at - pos, at - b * BLOCK, end - b * BLOCK)
          st.ramHits++
        } else {
          if (runLen === 0) runStart = at
          runLen += end - at
          st.hddReads++
        }
      } else {
        await flushRun(false)
        tmp ??= Buffer.allocUnsafe(BLOCK)
        await this.loadBlock(b, cls, tmp)
        tmp.copy(buf, at - pos, at - b * BLOCK, end - b * BLOCK)
      }
      at = end
    }
    await flushRun(sequential && runStart + runLen === pos + n)
    return n
  }

  /** From now on the scan's reads (readForScan) keep copies of what they read, up to maxBytes. */
  keepScanReads(maxBytes: number): void {
    this.scanKept ??= new Map()
    this.scanKeptMax = Math.floor(maxBytes / BLOCK)
  }

  /**
   * A read by the mount's own scan (not the guest's): served like any read,
   * and with keepScanReads on, a copy of every whole block no write touched
   * meanwhile is kept for adoptScanReads.
   */
  async readForScan(buf: Buffer, len: number, pos: number): Promise<number> {
    const kept = this.scanKept
    if (!kept || this.conventional || len === 0) return this.read(buf, len, pos, false)
    const first = Math.ceil(pos / BLOCK)
    const end = Math.floor(Math.min(pos + len, this.size) / BLOCK)
    const ws = new Map<number, { n: number; written: boolean }>()
    for (let b = first; b < end; b++) ws.set(b, this.watch(b))
    try {
      const n = await this.read(buf, len, pos, false)
      for (let b = first; b < end && (b + 1) * BLOCK <= pos + n; b++) {
        if (kept.size >= this.scanKeptMax || this.scanKept !== kept) break
        if (ws.get(b)!.written || this.dirty.has(b) || this.present.has(b) || kept.has(b)) continue
        kept.set(b, Buffer.from(buf.subarray(b * BLOCK - pos, (b + 1) * BLOCK - pos)))
      }
      return n
    } finally {
      for (const [b, w] of ws) this.unwatch(b, w)
    }
  }

  /**
   * The scan is done and the map current: the kept copies of meta-data blocks
   * `want`ed go to the SSD store and RAM (highest class priority first, as the
   * preload does) up to `limit` blocks (the SSD store's cap), the rest are
   * dropped, and copies stop being kept. Returns how many were adopted.
   */
  adoptScanReads(want: (cls: BlockClass, block: number) => boolean = isFastTier, limit = Infinity): number {
    const kept = this.scanKept
    this.scanKept = null
    if (!kept || !this.canRedirect()) return 0
    const take: [number, BlockClass][] = []
    for (const b of kept.keys()) {
      const cls = this.classOf(b)
      if (isFastTier(cls) && want(cls, b) && !this.dirty.has(b) && !this.present.has(b)) take.push([b, cls])
    }
    take.sort((x, y) => priorityOf(y[1]) - priorityOf(x[1]) || x[0] - y[0])
    if (take.length > limit) take.length = Math.max(0, limit)
    for (const [b, cls] of take) {
      const blk = kept.get(b)!
      this.ssd.put(this.image, b, blk, cls, false)
      this.present.add(b)
      if (ramWorthy(cls, blk)) this.ram.set(blockKey(this.image, b), blk, priorityOf(cls), true)
    }
    this.counters.preloaded += take.length
    this.counters.scanKept += take.length
    return take.length
  }

  /**
   * A restart with a warm SSD store: copies of the `want`ed meta-data blocks
   * the store holds go to RAM, highest class priority first (as the preload
   * leaves it), until RAM is full. Point reads on this thread, a few hundred
   * at a time between guest requests; nothing awaits between a block's read
   * and its insertion, so a write of it cannot slip in between. Returns how
   * many blocks went to RAM.
   */
  async refillRam(want: (cls: BlockClass, block: number) => boolean = isFastTier, stop: () => boolean = () => false): Promise<number> {
    if (this.conventional || this.ram.full) return 0
    const take: [number, BlockClass][] = []
    for (const b of this.present) {
      const cls = this.classOf(b)
      if (isFastTier(cls) && want(cls, b) && !this.ram.has(blockKey(this.image, b))) take.push([b, cls])
    }
    take.sort((x, y) => priorityOf(y[1]) - priorityOf(x[1]) || x[0] - y[0])
    let n = 0
    for (let i = 0; i < take.length && !this.ram.full; i++) {
      if (i % REFILL_CHUNK === 0 && i > 0) {
        await new Promise((r) => setImmediate(r))
        if (stop() || this.ssd.failed) break
      }
      const [b, cls] = take[i]
      const key = blockKey(this.image, b)
      // Written, dropped or reclassified since the list was made: the write path saw to it.
      if (!this.present.has(b) || this.ram.has(key) || this.classOf(b) !== cls) continue
      const held = this.ssd.get(this.image, b)
      if (!held || !ramWorthy(cls, held.data)) continue
      this.ram.set(key, held.data, priorityOf(cls), true)
      n++
    }
    this.counters.ramRefilled += n
    return n
  }

  /** Stops keeping the scan's reads and drops the copies (a failed scan, an unlink, the end of the mount). */
  dropScanReads(): void {
    this.scanKept = null
  }

  /** Before bytes of block 0 reach the HDD file: the new first block, for the identity signature. */
  private async beforeBlockZero(patch: Buffer, patchAt: number): Promise<void> {
    if (!this.onBlockZero) return
    const blk = Buffer.alloc(BLOCK)
    if (patchAt > 0 || patch.length < BLOCK) await preadFull(this.dev, blk, 0, BLOCK, 0)
    patch.copy(blk, patchAt, 0, Math.min(patch.length, BLOCK - patchAt))
    await this.onBlockZero(blk)
  }

  /** Conventional mode: every block through the LRU; a miss reads the block and the read-ahead window in one request. */
  private async readConventional(buf: Buffer, n: number, pos: number): Promise<number> {
    const st = this.stat(BlockClass.Data)
    const first = Math.floor(pos / BLOCK)
    const last = Math.floor((pos + n - 1) / BLOCK)
    const sequential = first === this.raNext || first === this.raNext - 1
    this.raWindow = sequential ? Math.min(RA_MAX, this.raWindow * 2) : RA_MIN
    this.raNext = last + 1
    const tmp = Buffer.allocUnsafe(BLOCK)
    for (let b = first; b <= last; ) {
      st.reads++
      const key = blockKey(this.image, b)
      if (this.ram.get(key, tmp)) {
        st.ramHits++
        copyPart(tmp, b, buf, pos, n)
        b++
        continue
      }
      // A miss: this block, the rest of the request's missing run, and the read-ahead window.
      let end = b + 1
      while (end <= last && !this.ram.has(blockKey(this.image, end))) end++
      const fileBlocks = Math.ceil(this.size / BLOCK)
      const raEnd = Math.min(fileBlocks, Math.max(end, (sequential ? end : b) + this.raWindow))
      const w = new Map<number, { n: number; written: boolean }>()
      for (let k = b; k < raEnd; k++) w.set(k, this.watch(k))
      try {
        const chunk = Buffer.allocUnsafe((raEnd - b) * BLOCK)
        await preadFull(this.dev, chunk, 0, chunk.length, b * BLOCK)
        st.hddReads += end - b
        for (let k = b; k < raEnd; k++) {
          const blk = chunk.subarray((k - b) * BLOCK, (k - b + 1) * BLOCK)
          if (!w.get(k)!.written) this.ram.set(blockKey(this.image, k), blk, 0)
          if (k < end) copyPart(blk, k, buf, pos, n)
        }
        st.reads += end - b - 1
      } finally {
        for (const [k, x] of w) this.unwatch(k, x)
      }
      b = end
    }
    return n
  }

  /**
   * A guest write. `absorb`: the caller found the write's blocks newly
   * allocated by the guest (free in its on-disk bitmaps): data blocks among
   * them are held back on the SSD store like meta-data, to be destaged later
   * in long runs, when the store can take them.
   */
  async write(buf: Buffer, len: number, pos: number, absorb = false): Promise<number> {
    this.lastGuestIo = Date.now()
    if (len === 0) return 0
    if (this.conventional) {
      // Write-through; the LRU keeps whole blocks written, drops partly written ones.
      if (pos + len > this.size) this.size = pos + len
      const st = this.stat(BlockClass.Data)
      for (let b = Math.floor(pos / BLOCK); b <= Math.floor((pos + len - 1) / BLOCK); b++) {
        st.writes++
        this.touched(b)
        const lo = Math.max(pos, b * BLOCK)
        const hi = Math.min(pos + len, (b + 1) * BLOCK)
        if (hi - lo === BLOCK) this.ram.set(blockKey(this.image, b), buf.subarray(lo - pos, hi - pos), 0)
        else this.ram.delete(blockKey(this.image, b))
      }
      await pwriteFull(this.dev, buf, 0, len, pos)
      return len
    }
    if (pos + len > this.size) {
      // Grow the HDD file first, so its size is the file's size whichever tier holds the bytes.
      fs.ftruncateSync(this.fd, pos + len)
      this.size = pos + len
    }
    let runStart = -1
    let runLen = 0
    let runBlocks: number[] = []
    // Asked once a request (it sums every image's dirty blocks); writeMeta asks again per block and writes through if it must.
    const hold = absorb && this.canRedirect()
    const flushRun = async () => {
      if (!runLen) return
      const s = runStart
      const l = runLen
      const blocks = runBlocks
      runLen = 0
      runStart = -1
      runBlocks = []
      try {
        if (s < BLOCK) await this.beforeBlockZero(buf.subarray(s - pos, s - pos + Math.min(l, BLOCK - s)), s)
        await pwriteFull(this.dev, buf, s - pos, l, s)
      } finally {
        for (const b of blocks) this.endHddWrite(b)
      }
    }
    for (let at = pos; at < pos + len; ) {
      const b = Math.floor(at / BLOCK)
      const end = Math.min((b + 1) * BLOCK, pos + len)
      const cls = this.classOf(b)
      const st = this.stat(cls)
      st.writes++
      if (!this.routedAsMeta(b, cls) && !hold) {
        // Data: straight to the HDD; copies from an earlier class must not outlive it.
        this.beginHddWrite(b)
        runBlocks.push(b)
        this.dropCopies(b)
        this.rememberData(b)
        if (runLen === 0) runStart = at
        runLen += end - at
      } else {
        await flushRun()
        this.touched(b)
        await this.withLock(b, () => this.writeMeta(b, cls, buf, at - pos, end - at, at - b * BLOCK))
      }
      at = end
    }
    await flushRun()
    return len
  }

  private rememberData(b: number): void {
    this.recentData.delete(b)
    this.recentData.add(b)
    if (this.recentData.size > RECENT_DATA_MAX) this.recentData.delete(this.recentData.values().next().value as number)
  }

  /** One meta-data-routed block (lock held): redirected to RAM and the SSD store, or written through when it cannot take it. */
  private async writeMeta(b: number, cls: BlockClass, src: Buffer, srcAt: number, n: number, blkAt: number): Promise<void> {
    const st = this.stat(cls)
    const blk = Buffer.allocUnsafe(BLOCK)
    if (n < BLOCK) await this.loadBlock(b, cls, blk) // a partial write keeps the rest of the block
    src.copy(blk, blkAt, srcAt, srcAt + n)
    this.touched(b)
    const key = blockKey(this.image, b)
    if (this.canRedirect()) {
      if (!isFastTier(cls) && !this.dirty.has(b)) this.counters.absorbed++
      this.ram.set(key, blk, priorityOf(cls), true)
      this.ssd.put(this.image, b, blk, cls, true)
      this.dirty.add(b)
      this.present.add(b)
      st.redirected++
      return
    }
    // Write-through: the whole block to the HDD, which becomes the authority again.
    if (b === 0) await this.beforeBlockZero(blk, 0)
    const len = Math.min(BLOCK, this.size - b * BLOCK)
    this.beginHddWrite(b)
    try {
      await pwriteFull(this.dev, blk, 0, len, b * BLOCK)
    } finally {
      this.endHddWrite(b)
    }
    this.ram.set(key, blk, priorityOf(cls), true)
    if (this.dirty.has(b) || this.present.has(b)) {
      this.dirty.delete(b)
      this.present.delete(b)
      if (!this.ssd.failed) this.ssd.delete(this.image, b)
    }
    this.counters.writeThrough++
  }

  /** Durability point: the SSD transaction holding every redirected write, and the HDD file, both synced. */
  async fsync(): Promise<void> {
    await this.ssd.commitUnlessFailed()
    if (this.ssd.failed) {
      // The commit failed (a full disk, an I/O error): the guest's redirected writes are durable
      // once the failover has written them to the HDD file; the cache's failure is not the guest's.
      await this.ssdFailover()
      if (this.dirty.size) throw new Error(`the SSD store failed and ${this.dirty.size} block(s) it held could not be written to the HDD file`)
    }
    await fdatasync(this.fd)
  }

  /**
   * Writes dirty blocks back to the HDD file in file order (at most `limit`),
   * syncs, then marks them clean; a block written again meanwhile stays dirty.
   * Returns how many were written back. Calls run one at a time (the background
   * tick, the destage after a last close, `vmdi-fuse destage` and unmount may
   * overlap): two overlapping batches would pick the same blocks, one of them
   * would find them cleaned by the other and return 0, and a caller looping
   * "until a batch returns 0" would stop with dirty blocks left.
   */
  destage(limit = Infinity): Promise<number> {
    const run = this.destaging.then(() => this.destageBatch(limit))
    this.destaging = run.catch(() => undefined)
    return run
  }

  private async destageBatch(limit: number): Promise<number> {
    const blocks = [...this.dirty].sort((a, b) => a - b).slice(0, limit)
    if (!blocks.length) return 0
    // Consecutive blocks go to the HDD in one write: one at a time, each would wait
    // most of a revolution on a disk for the sector it has just missed.
    const runs: number[][] = []
    for (const b of blocks) {
      const run = runs[runs.length - 1]
      if (run && b === run[run.length - 1] + 1 && run.length < DESTAGE_RUN) run.push(b)
      else runs.push([b])
    }
    const done: { b: number; w: { n: number; written: boolean }; data: Buffer }[] = []
    try {
      // Under the blocks' locks: a write-through or redirected write of one is either before
      // (then it is clean, or its newer copy is what we write) or after (then it stays dirty).
      for (const run of runs) await this.withLocks(run, () => this.destageRun(run, done))
      await fdatasync(this.fd)
      let n = 0
      for (const { b, w, data } of done) {
        if (w.written || !this.dirty.has(b)) continue
        const cls = this.classOf(b)
        if (this.ssd.failed) {
          /* the HDD has it (synced above); the store is going */
        } else if (isFastTier(cls)) this.ssd.markClean(this.image, b, data, cls)
        else {
          // Data held back (new allocations, or a block reclassified while dirty): the HDD is
          // its place now; the store keeps the fast tiers' blocks.
          this.present.delete(b)
          this.ssd.delete(this.image, b)
        }
        this.dirty.delete(b)
        n++
      }
      // A store failing meanwhile: the blocks are on the HDD (synced above) all the same.
      await this.ssd.commitUnlessFailed()
      this.counters.destaged += n
      return n
    } finally {
      for (const { b, w } of done) this.unwatch(b, w)
    }
  }

  /** Runs fn with the locks of `blocks` held (taken in the given order: callers pass ascending runs). */
  private withLocks<T>(blocks: number[], fn: () => Promise<T>, i = 0): Promise<T> {
    if (i >= blocks.length) return fn()
    return this.withLock(blocks[i], () => this.withLocks(blocks, fn, i + 1))
  }

  /** One run of consecutive blocks (their locks held): the still-dirty ones written to the HDD, contiguous ones in one write. */
  private async destageRun(run: number[], done: { b: number; w: { n: number; written: boolean }; data: Buffer }[]): Promise<void> {
    let seg: Buffer[] = []
    let segStart = -1
    const flush = async () => {
      if (!seg.length) return
      const first = segStart
      const out = seg.length === 1 ? seg[0] : Buffer.concat(seg)
      seg = []
      const len = Math.min(out.length, this.size - first * BLOCK)
      if (len <= 0) return
      if (first === 0) await this.beforeBlockZero(out, 0)
      await pwriteFull(this.dev, out, 0, len, first * BLOCK)
    }
    for (const b of run) {
      const data = this.dirtyCopy(b)
      if (!data) {
        await flush()
        continue
      }
      if (!seg.length) segStart = b
      done.push({ b, w: this.watch(b), data })
      seg.push(data)
    }
    await flush()
  }

  /** A copy of dirty block b's current bytes (RAM holds the dirty copy when it has one: writes set both), or null if it is not dirty. */
  private dirtyCopy(b: number): Buffer | null {
    if (!this.dirty.has(b)) return null
    const out = Buffer.allocUnsafe(BLOCK)
    if (this.ram.get(blockKey(this.image, b), out)) return out
    const s = this.ssd.get(this.image, b)
    if (!s || !s.dirty) {
      this.dirty.delete(b)
      return null
    }
    s.data.copy(out, 0, 0, BLOCK)
    return out
  }

  /**
   * The map changed the class of blocks [start, start+count). Blocks becoming
   * meta-data are promoted (their HDD copy is loaded on first use or by
   * preload); blocks leaving it drop their clean copies, while dirty ones stay
   * authoritative until destaged.
   */
  reclassified(start: number, count: number, from: BlockClass, to: BlockClass): void {
    this.counters.reclassified += count
    const wasMeta = isFastTier(from)
    const nowMeta = isFastTier(to)
    for (let b = start; b < start + count; b++) {
      if (!wasMeta && nowMeta) {
        this.counters.promoted++
        if (this.recentData.delete(b)) this.counters.deferred++
      } else if (wasMeta && !nowMeta && !this.dirty.has(b)) {
        this.dropCopies(b)
      }
    }
  }

  /**
   * Copies meta-data blocks of [start, start+count) whose class `want`s in from
   * the HDD file (one read; data blocks in the span are read and dropped) into
   * the SSD store and RAM, skipping blocks already held or written meanwhile.
   * Returns how many were copied.
   */
  async preload(start: number, count: number, want: (cls: BlockClass, block: number) => boolean = isFastTier): Promise<number> {
    const first = start
    const last = Math.min(start + count, Math.ceil(this.size / BLOCK))
    if (last <= first || !this.canRedirect()) return 0
    const ws = new Map<number, { n: number; written: boolean }>()
    for (let b = first; b < last; b++) ws.set(b, this.watch(b))
    try {
      const buf = Buffer.allocUnsafe((last - first) * BLOCK)
      await preadFull(this.dev, buf, 0, buf.length, first * BLOCK)
      let n = 0
      for (let b = first; b < last; b++) {
        const cls = this.classOf(b)
        if (!isFastTier(cls) || !want(cls, b) || ws.get(b)!.written || this.dirty.has(b) || this.present.has(b)) continue
        const blk = buf.subarray((b - first) * BLOCK, (b - first + 1) * BLOCK)
        this.ssd.put(this.image, b, blk, cls, false)
        this.present.add(b)
        // All-zero blocks (unused inode-table space, empty bitmaps) go to the SSD store only:
        // RAM is kept for what lookups read.
        if (ramWorthy(cls, blk)) this.ram.set(blockKey(this.image, b), blk, priorityOf(cls), true)
        n++
      }
      this.counters.preloaded += n
      return n
    } finally {
      for (const [b, w] of ws) this.unwatch(b, w)
    }
  }

  /** The file shrank or grew: drop every copy of blocks past the new end; the last partial block is trimmed. */
  async truncate(size: number): Promise<void> {
    const first = Math.ceil(size / BLOCK)
    for (const b of [...this.present]) if (b >= first) this.present.delete(b)
    for (const b of [...this.dirty]) if (b >= first) this.dirty.delete(b)
    for (const b of this.watched.keys()) if (b >= first) this.touched(b)
    if (!this.ssd.failed) this.ssd.truncate(this.image, first)
    this.ram.dropImage(this.image, first)
    const last = Math.floor(size / BLOCK)
    if (size % BLOCK && this.dirty.has(last)) {
      // Bytes past the new end in the last block read as zeros if the file grows again.
      const blk = Buffer.alloc(BLOCK)
      this.ssd.get(this.image, last)!.data.copy(blk, 0, 0, size % BLOCK)
      this.ssd.put(this.image, last, blk, this.classOf(last), true)
      this.ram.delete(blockKey(this.image, last))
      this.touched(last)
    } else if (size % BLOCK) {
      // A clean copy holds the bytes the truncate drops: only the HDD file (which zeroes them) may answer.
      this.touched(last)
      this.dropCopies(last)
    }
    fs.ftruncateSync(this.fd, size)
    this.size = size
  }

  get fileSize(): number {
    return this.size
  }
}
