// One attached image's block state, shared by its request path (router.ts,
// conventional.ts or block-cache.ts), warm start (warm-start.ts) and destage (destage.ts):
//
// | state                       | owner                                   |
// | --------------------------- | --------------------------------------- |
// | which blocks the SSD store holds, which are dirty | `held` (the ledger, ledger.ts) |
// | locks, watches, HDD writes in flight | `watch` (blocks.ts)            |
// | the file's size             | here: grown by writes, set by truncate  |
// | per-class stats, counters   | here: bumped by every path              |
// | the guest's last request    | here (`lastGuestIo`): background work yields to it |
// | what the binding may serve natively | `native` (native-data.ts), lowered by watches and copies here |
//
// The invariant every path keeps (read-your-writes, DESIGN.md): a block has
// exactly one authoritative copy, the SSD store's when the ledger says it is
// dirty, the HDD file's otherwise. A dirty block is routed as meta-data
// whatever its class says now, so a stale HDD copy never wins; RAM and clean
// SSD copies are only copies of the authority: a write that goes to the HDD
// drops them first (dropCopies).

import fs from 'fs'
import { BlockClass, isFastData, isFastTier, priorityOf } from '../introspect/classes'
import { BLOCK, blockKey, type RamCache } from '../store/ram'
import { fdatasync, plainDevice, preadFull, pwriteFull, type HddDevice } from '../store/device'
import type { SsdStore } from '../store/ssd'
import { BlockWatch } from './blocks'
import type { ImageLedger } from './ledger'
import { NATIVE_NONE, NATIVE_READ, type NativeBlocks } from './native-data'

export interface ClassStats {
  reads: number
  ramHits: number
  ssdHits: number
  hddReads: number
  writes: number
  redirected: number
  /** Blocks a partial write had to complete first (from RAM, the SSD store or the HDD): not reads, not hits. */
  rmwLoads: number
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
  /** Reads and writes the binding served on the libfuse threads with pread/pwrite (the native data path), and their bytes. */
  nativeReads: number
  nativeWrites: number
  nativeReadBytes: number
  nativeWriteBytes: number
  /** Blocks of the learnt boot set (what the VM read during its last boot) read into RAM at a start. */
  bootPrefetched: number
  /** Blocks of learnt boot sets given clean copies in the SSD store at a boot's end (the next start reads them from there). */
  bootKept: number
  /** The SSD block cache (--cache-mode block-cache): blocks of requests past the sequential cutoff, read or written around the SSD store. */
  bypassed: number
  /** Its clean blocks the block cache's LRU dropped from the SSD store to make room. */
  evicted: number
}

/** The RAM priority of a booting VM's boot files' data (that of xattr blocks: below the structures every lookup walks). */
export const BOOT_RAM_PRIORITY = 2

/** One all-zero block, shared (never written to: the tiers copy what they take). */
export const ZERO_BLOCK = Buffer.alloc(BLOCK)

/**
 * Whether a copy goes to RAM when the store takes it (preload, refill): all-zero
 * meta-data blocks (unused inode-table space, empty bitmaps) stay on the SSD
 * store only, RAM is kept for what lookups read; small and boot files' data
 * goes in whatever its bytes (a zero block of a file is read like any other).
 */
export function ramWorthy(cls: BlockClass, blk: Buffer): boolean {
  return isFastData(cls) || !blk.equals(ZERO_BLOCK)
}

/** Copies the part of 4 KiB block b (in blk) that falls inside the request [pos, pos+n) into buf. */
export function copyPart(blk: Buffer, b: number, buf: Buffer, pos: number, n: number): void {
  const lo = Math.max(pos, b * BLOCK)
  const hi = Math.min(pos + n, (b + 1) * BLOCK)
  blk.copy(buf, lo - pos, lo - b * BLOCK, hi - b * BLOCK)
}

export interface ImageStateOptions {
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
}

export class ImageState {
  readonly stats = new Map<BlockClass, ClassStats>()
  readonly counters: RouterCounters = { destaged: 0, deferred: 0, promoted: 0, reclassified: 0, writeThrough: 0, preloaded: 0, scanKept: 0, ramRefilled: 0, readAhead: 0, nativeRamHits: 0, absorbed: 0, nativeReads: 0, nativeWrites: 0, nativeReadBytes: 0, nativeWriteBytes: 0, bootPrefetched: 0, bootKept: 0, bypassed: 0, evicted: 0 }
  readonly watch: BlockWatch
  readonly dev: HddDevice
  readonly canRedirect: () => boolean
  readonly ssdFailover: () => Promise<void>
  private readonly onBlockZero: ((bytes: Buffer) => Promise<void>) | null
  /** The file's size in bytes (the HDD file is grown first, so this is its size whichever tier holds the bytes). */
  size: number
  /** Last time a guest request arrived (background work yields to guest I/O). */
  lastGuestIo = 0
  /**
   * Last time this daemon changed the HDD file (a write, a truncate), and the last
   * such time recorded in the SSD store (noteWrites): after a crash, a file changed
   * later than that was changed by someone else.
   */
  lastHddWrite = 0
  private notedHddWrite = 0
  /** Told of every block written (warm start drops its kept copy of it). */
  onTouched: ((b: number) => void) | null = null
  /** The binding's table of blocks it serves natively (null: none, e.g. while the scan runs). */
  native: NativeBlocks | null = null
  /** Its VM is booting (vm-start.ts): boot files' data goes to RAM at BOOT_RAM_PRIORITY, not the lowest. */
  booting = false
  /** Guest requests of the JavaScript path in progress (a request waiting at a busy disk is not a quiet guest). */
  guestInFlight = 0

  /** Runs one guest request: the idle clock is set at its start and its end, and it counts as in flight meanwhile. */
  async guestRequest<T>(fn: () => Promise<T>): Promise<T> {
    this.lastGuestIo = Date.now()
    this.guestInFlight++
    try {
      return await fn()
    } finally {
      this.guestInFlight--
      this.lastGuestIo = Date.now()
    }
  }

  /** Told of every guest read's blocks (vm-start.ts records what a booting VM reads). */
  onGuestRead: ((first: number, last: number) => void) | null = null
  /** The SSD block cache (block-cache.ts): a destaged block keeps its row as a clean copy whatever its class. */
  keepsDestaged = false

  constructor(
    readonly fd: number,
    readonly image: number,
    readonly ram: RamCache,
    readonly ssd: SsdStore,
    readonly held: ImageLedger,
    public classOf: (block: number) => BlockClass,
    opts: ImageStateOptions = {},
  ) {
    this.size = fs.fstatSync(fd).size
    this.watch = new BlockWatch((b) => this.onTouched?.(b))
    // A load (a watch) or a copy: no native write of the block may slip past it (native-data.ts).
    this.watch.onWatch = (first, end) => this.native?.lower(first, end - first, NATIVE_READ)
    held.onCopy = (b, dirty) => this.native?.lower(b, 1, dirty ? NATIVE_NONE : NATIVE_READ)
    this.canRedirect = opts.canRedirect ?? (() => !ssd.failed)
    this.onBlockZero = opts.onBlockZero ?? null
    this.ssdFailover = opts.ssdFailover ?? (() => Promise.resolve())
    this.dev = opts.device ?? plainDevice(fd)
  }

  key(b: number): number {
    return blockKey(this.image, b)
  }

  /** The RAM priority of a copy of class cls: the class's, except boot files' data while the VM boots. */
  ramPriority(cls: BlockClass): number {
    return this.booting && cls === BlockClass.BootFile ? BOOT_RAM_PRIORITY : priorityOf(cls)
  }

  stat(cls: BlockClass): ClassStats {
    let s = this.stats.get(cls)
    if (!s) this.stats.set(cls, (s = { reads: 0, ramHits: 0, ssdHits: 0, hddReads: 0, writes: 0, redirected: 0, rmwLoads: 0 }))
    return s
  }

  /** Routed through the fast tiers: a fast-tier class, or a dirty copy (the authority) whatever the class. */
  routedAsMeta(b: number, cls: BlockClass = this.classOf(b)): boolean {
    return isFastTier(cls) || this.held.isDirty(b)
  }

  /** Drops the copies of a block whose authority is (now) the HDD file. */
  dropCopies(b: number): void {
    this.ram.delete(this.key(b))
    this.held.dropClean(b)
  }

  /** Before bytes of block 0 reach the HDD file: the new first block, for the identity signature. */
  async beforeBlockZero(patch: Buffer, patchAt: number): Promise<void> {
    if (!this.onBlockZero) return
    const blk = Buffer.alloc(BLOCK)
    if (patchAt > 0 || patch.length < BLOCK) await preadFull(this.dev, blk, 0, BLOCK, 0)
    patch.copy(blk, patchAt, 0, Math.min(patch.length, BLOCK - patchAt))
    await this.onBlockZero(blk)
  }

  /** Records in the SSD store when this daemon last changed the HDD file, if that moved since (the background tick, every fsync). */
  noteWrites(): void {
    if (this.lastHddWrite <= this.notedHddWrite) return
    this.notedHddWrite = this.lastHddWrite
    this.ssd.noteWritten(this.image, this.lastHddWrite)
  }

  /** Writes buf[off, off+len) at pos to the HDD file, the blocks' watches told at start and end. */
  async hddWrite(buf: Buffer, off: number, len: number, pos: number): Promise<void> {
    const first = Math.floor(pos / BLOCK)
    const last = Math.floor((pos + len - 1) / BLOCK)
    for (let b = first; b <= last; b++) this.watch.beginHddWrite(b)
    try {
      if (pos < BLOCK) await this.beforeBlockZero(buf.subarray(off, off + Math.min(len, BLOCK - pos)), pos)
      await pwriteFull(this.dev, buf, off, len, pos)
    } finally {
      this.lastHddWrite = Date.now()
      for (let b = first; b <= last; b++) this.watch.endHddWrite(b)
    }
  }

  /** A write past the end: the HDD file grows first, so its size is the file's whichever tier holds the bytes. */
  async grow(size: number): Promise<void> {
    fs.ftruncateSync(this.fd, size)
    this.lastHddWrite = Date.now()
    this.size = size
    this.native?.resize(size)
  }

  /** The file shrank or grew: every copy of blocks past the new end goes; the last partial block is trimmed. */
  async truncate(size: number): Promise<void> {
    const first = Math.ceil(size / BLOCK)
    // Native I/O stops at the new end first; blocks past it are JavaScript's if the file grows again.
    const oldBlocks = Math.ceil(this.size / BLOCK)
    this.native?.resize(Math.min(size, this.size))
    this.native?.lower(Math.max(0, first - 1), oldBlocks - Math.max(0, first - 1), NATIVE_NONE)
    this.held.truncate(first)
    this.watch.touchedFrom(first)
    this.ram.dropImage(this.image, first)
    const last = Math.floor(size / BLOCK)
    if (size % BLOCK && this.held.isDirty(last)) {
      // Bytes past the new end in the last block read as zeros if the file grows again.
      const blk = Buffer.alloc(BLOCK)
      this.held.read(last)!.data.copy(blk, 0, 0, size % BLOCK)
      this.held.putDirty(last, blk, this.classOf(last))
      this.ram.delete(this.key(last))
      this.watch.touched(last)
    } else if (size % BLOCK) {
      // A clean copy holds the bytes the truncate drops: only the HDD file (which zeroes them) may answer.
      this.watch.touched(last)
      this.dropCopies(last)
    }
    fs.ftruncateSync(this.fd, size)
    this.lastHddWrite = Date.now()
    this.size = size
    this.native?.resize(size)
  }
}

/** What the datapath asks of an image's request path (the introspecting router and the conventional one). */
export interface Router {
  readonly state: ImageState
  /** `guest` false: the mount's own reads (scans), kept out of the guest's stats and idle clock. */
  read(buf: Buffer, len: number, pos: number, guest?: boolean): Promise<number>
  /** `absorb`: the caller found the write's blocks newly allocated by the guest (new data may be held back). */
  write(buf: Buffer, len: number, pos: number, absorb?: boolean): Promise<number>
  /** Durability point: every write acknowledged before it survives a crash. */
  fsync(): Promise<void>
  truncate(size: number): Promise<void>
  /** The map changed the class of blocks [start, start+count). */
  reclassified(start: number, count: number, from: BlockClass, to: BlockClass): void
  /** A block of a guest read the binding answered from RAM on its own (counted in batches). */
  servedFromRam(b: number, at: number): void
}

/** The fsync both request paths share: the SSD transaction holding every redirected write, then the HDD file. */
export async function syncImage(s: ImageState): Promise<void> {
  s.noteWrites()
  await s.ssd.commitUnlessFailed()
  if (s.ssd.failed) {
    // The commit failed (a full disk, an I/O error): the guest's redirected writes are durable
    // once the failover has written them to the HDD file; the cache's failure is not the guest's.
    await s.ssdFailover()
    if (s.held.dirtyCount) throw new Error(`the SSD store failed and ${s.held.dirtyCount} block(s) it held could not be written to the HDD file`)
  }
  await fdatasync(s.fd)
}

/** A block the binding served from RAM: a read and a RAM hit of its class, and guest activity. */
export function countServedFromRam(s: ImageState, b: number, at: number): void {
  const st = s.stat(s.classOf(b))
  st.reads++
  st.ramHits++
  s.counters.nativeRamHits++
  s.onGuestRead?.(b, b)
  if (at > s.lastGuestIo) s.lastGuestIo = at
}
