// The native data path (issue 17): the binding serves reads and writes of an
// image's blocks that need no JavaScript with pread/pwrite on the libfuse
// threads (native/fuse/block_state.h); this file keeps its per-image table of
// block states current. A block's state says what the binding may do with it:
//
// | state  | the binding may | the block is                                            |
// | ------ | --------------- | ------------------------------------------------------- |
// | NONE   | nothing         | fast-tier (meta-data, small/boot files' data: the live map must see its writes, the tiers serve its reads), dirty (the SSD store is the authority), a copy in RAM (the RAM index answers its reads), data with a clean SSD copy (a learnt boot set's: JavaScript reads the copy), block 0 (the identity signature follows its writes), not yet learnt, or past the end |
// | READ   | read it         | data whose HDD copy is the authority, with a clean copy in the SSD store, a load in progress, or not known to be allocated by the guest while new data is held |
// | RW     | read and write  | data with no copy anywhere, allocated in the guest (or new data is not held) |
//
// Rules (the ordering the binding gives: a state change waits for native I/O
// in flight on the block):
// - Lowering (clamp) happens BEFORE the JavaScript I/O it protects: a watch
//   (a load that may keep what it reads) clamps to READ before its HDD read, so
//   no native write lands between the read and the copy; a dirty or fast-tier
//   block is clamped to NONE before its first redirected byte is acknowledged.
//   The RAM tier and the ledger clamp again as they take a copy (a safety net).
// - Raising happens only after JavaScript served the block itself with no copy
//   left and nothing watching it (learn): a read raises to READ, a data write
//   not held back raises to RW (when new data is held, only for blocks the
//   guest's bitmaps show allocated). So the first access after any lowering
//   goes through JavaScript once, then natively again.
// - The table is all NONE from the attach until the scan is done (its race
//   check sees every write); no table at all under --emulate-hdd (the emulated
//   disk must see every HDD I/O), for the conventional array (benchmark
//   configuration (b)), or with VMDI_DATA_NATIVE=off.

import { BlockClass, isFastTier } from '../introspect/classes'
import { log } from '../log'
import { splitKey } from '../native/constants'
import { BLOCK, type RamCache } from '../store/ram'
import type { ImageEntry } from './image'
import type { ImageState } from './image-state'

/** The binding's block states (native/vmdi_constants.h). */
export const NATIVE_NONE = 0
export const NATIVE_READ = 1
export const NATIVE_RW = 2

/** One image's table in the binding (opaque). */
export type NativeTable = object

export interface NativeDataStats {
  reads: number
  writes: number
  readBytes: number
  writeBytes: number
  /** ms since the epoch, 0: never. */
  lastReadMs: number
  lastWriteMs: number
  /** Requests of registered handles the table did not serve (the RAM index or JavaScript did). */
  passed: number
  /** Bytes of the table's chunk memory. */
  tableBytes: number
}

/** What the datapath needs of the binding (the daemon passes fuse-native's methods; unit tests pass a model). */
export interface NativeDataBinding {
  create(image: number, fd: number): NativeTable | null
  set(t: NativeTable, start: number, count: number, state: number): void
  clamp(t: NativeTable, start: number, count: number, max: number): void
  get(t: NativeTable, block: number): number
  size(t: NativeTable, bytes: number): void
  readsToJs(t: NativeTable, on: boolean): void
  stats(t: NativeTable): NativeDataStats
  retire(t: NativeTable): void
}

/** What an image's table needs to know of the image to decide a block's state. */
export interface NativeBlockFacts {
  /** Fast-tier class or dirty copy: JavaScript routes it. */
  routedAsMeta(b: number): boolean
  /** A copy in RAM or the SSD store, or a load watching it. */
  hasCopyOrWatch(b: number): boolean
  /** Blocks of the file (native I/O stays inside). */
  blocks(): number
}

/** One image's native table and the rules above. */
export class NativeBlocks {
  private retired = false
  /** The states are built (before: all NONE, the scan running). */
  built = false
  /** Counters last seen (stats deltas, the idle clock). */
  private seen: NativeDataStats = { reads: 0, writes: 0, readBytes: 0, writeBytes: 0, lastReadMs: 0, lastWriteMs: 0, passed: 0, tableBytes: 0 }

  constructor(
    private readonly b: NativeDataBinding,
    readonly table: NativeTable,
    private readonly facts: NativeBlockFacts,
  ) {}

  /** The file's size changed (a write past the end, a truncate): native I/O stays inside it. */
  resize(bytes: number): void {
    if (!this.retired) this.b.size(this.table, bytes)
  }

  /**
   * The table once the map is current, on a table still all NONE that the
   * image's handles may already use: only raises, each block straight to its
   * final state, so the binding never sees a state above the one it ends at.
   * Every block but block 0 is RW, except the `fast` runs (fast-tier classes)
   * and `dirty` blocks (NONE: dirty copies, and RAM copies the RAM index
   * answers), and the `free` runs (free in the guest's bitmaps while new data
   * is held) and blocks with `copies` (READ: clean SSD copies, loads in progress).
   */
  build(fast: Iterable<[number, number]>, free: Iterable<[number, number]>, copies: Iterable<number>, dirty: Iterable<number>): void {
    if (this.retired) return
    this.built = true
    const end = this.facts.blocks()
    // Events pos*4 + kind: 0 a NONE cover starts, 1 it ends, 2 a READ cover starts, 3 it ends.
    const ev: number[] = [0, 5]
    const add = (s: number, c: number, lvl: number) => {
      if (c > 0 && s < end) ev.push(s * 4 + lvl * 2, Math.min(end, s + c) * 4 + lvl * 2 + 1)
    }
    for (const [s, c] of fast) add(s, c, 0)
    for (const b of dirty) add(b, 1, 0)
    for (const [s, c] of free) add(s, c, 1)
    for (const b of copies) add(b, 1, 1)
    const sorted = Float64Array.from(ev).sort()
    let none = 0
    let read = 0
    let at = 0
    let runStart = 0
    let runState = NATIVE_NONE
    const flush = (upTo: number) => {
      if (runState !== NATIVE_NONE && upTo > runStart) this.b.set(this.table, runStart, upTo - runStart, runState)
    }
    const advance = (to: number) => {
      if (to <= at) return
      const st = none > 0 ? NATIVE_NONE : read > 0 ? NATIVE_READ : NATIVE_RW
      if (st !== runState) {
        flush(at)
        runStart = at
        runState = st
      }
      at = to
    }
    for (const e of sorted) {
      const pos = Math.floor(e / 4)
      advance(pos)
      const kind = e - pos * 4
      if (kind === 0) none++
      else if (kind === 1) none--
      else if (kind === 2) read++
      else read--
    }
    advance(end)
    flush(end)
  }

  /** Blocks [first, first+count) may not be written natively (READ) or touched at all (NONE) from now on; in-flight native I/O on them has ended when this returns. */
  lower(first: number, count: number, max: number): void {
    if (this.retired || count <= 0) return
    if (count === 1 && this.b.get(this.table, first) <= max) return
    this.b.clamp(this.table, first, count, max)
  }

  /** JavaScript just read block b from the HDD file with nothing to keep: the binding may read it too. */
  learnRead(b: number): void {
    // Before the build the map is not current (everything would look like data): nothing is learnt.
    if (!this.built || this.retired || b === 0 || b >= this.facts.blocks() || this.facts.routedAsMeta(b)) return
    if (this.b.get(this.table, b) === NATIVE_NONE) this.b.set(this.table, b, 1, NATIVE_READ)
  }

  /** JavaScript just wrote data block b to the HDD file (not held back), the guest having allocated it: the binding may write it too. */
  learnWrite(b: number): void {
    if (!this.built || this.retired || b === 0 || b >= this.facts.blocks() || this.facts.routedAsMeta(b)) return
    const now = this.b.get(this.table, b)
    if (now === NATIVE_RW) return
    this.b.set(this.table, b, 1, this.facts.hasCopyOrWatch(b) ? Math.max(now, NATIVE_READ) : NATIVE_RW)
  }

  state(b: number): number {
    return this.retired ? NATIVE_NONE : this.b.get(this.table, b)
  }

  /** While on, every read goes to JavaScript (it records what a booting VM reads, vm-start.ts). */
  readsToJs(on: boolean): void {
    if (!this.retired) this.b.readsToJs(this.table, on)
  }

  stats(): NativeDataStats {
    return this.retired ? this.seen : this.b.stats(this.table)
  }

  /** The counters since the last call (the datapath's tick folds them into the image's stats and idle clock). */
  delta(): { reads: number; writes: number; readBytes: number; writeBytes: number; lastReadMs: number; lastWriteMs: number } {
    const now = this.stats()
    const d = {
      reads: now.reads - this.seen.reads,
      writes: now.writes - this.seen.writes,
      readBytes: now.readBytes - this.seen.readBytes,
      writeBytes: now.writeBytes - this.seen.writeBytes,
      lastReadMs: now.lastReadMs,
      lastWriteMs: now.lastWriteMs,
    }
    this.seen = now
    return d
  }

  /** No native I/O on this image from now on (its handles are unregistered first). */
  retire(): void {
    if (this.retired) return
    this.seen = this.b.stats(this.table)
    this.retired = true
    this.b.retire(this.table)
  }

  get active(): boolean {
    return !this.retired
  }
}


/** The native data path of a mount: every image's table, from its start (the scan done) to its retirement. */
export class NativeData {
  constructor(
    private readonly binding: NativeDataBinding,
    private readonly register: (entry: ImageEntry) => void,
    private readonly unregister: (entry: ImageEntry) => void,
    private readonly ram: RamCache,
    lookup: (image: number) => ImageEntry | undefined,
    /** New data is held on the SSD store (--new-data): blocks free in the guest's bitmaps stay READ. */
    private readonly holdNew: boolean,
  ) {
    // A copy going to RAM: no native write of the block may slip past it, and its reads go to the RAM index.
    ram.onSet = (key) => {
      const { image, block } = splitKey(key)
      lookup(image)?.state.native?.lower(block, 1, NATIVE_NONE)
    }
  }

  /**
   * A new image: its table, all NONE (every block JavaScript's), made before
   * any handle of it is registered, so each handle is registered at its open
   * (and gets parallel direct writes) while the scan still runs.
   */
  attach(entry: ImageEntry): void {
    const s = entry.state
    const table = this.binding.create(entry.id, entry.fd)
    if (!table) {
      log.warn(`image ${entry.rel}: the binding could not make a block-state table: its data stays on the JavaScript path`)
      return
    }
    this.binding.size(table, s.size)
    s.native = new NativeBlocks(this.binding, table, {
      routedAsMeta: (b) => s.routedAsMeta(b),
      hasCopyOrWatch: (b) => this.ram.has(s.key(b)) || s.held.isHeld(b) || s.watch.isWatched(b),
      blocks: () => Math.ceil(s.size / BLOCK),
    })
  }

  /** The image's scan is done (its kept copies adopted): the table gets its states (native-data's rules). */
  async start(entry: ImageEntry, gone: () => boolean): Promise<void> {
    const s = entry.state
    if (!s.native?.active) return
    let free: Array<[number, number]> = []
    if (this.holdNew) {
      try {
        free = await entry.map.freeFileRuns()
      } catch (e) {
        log.warn(`image ${entry.rel}: free-space walk failed (${(e as Error).message}): no native data writes until blocks are learnt`)
        free = [[0, Math.ceil(s.size / BLOCK)]]
      }
    }
    if (gone() || !s.native.active) return
    const fast: Array<[number, number]> = []
    for (const [start, count, cls] of entry.map.runs()) if (isFastTier(cls)) fast.push([start, count])
    // RAM copies NONE: the binding's RAM index answers them (a miss comes to JavaScript, which learns the block again).
    // Data blocks with a clean SSD copy (learnt boot sets) NONE too: JavaScript serves them from the SSD store.
    const held = s.held.heldBlocks()
    const heldData = held.filter((b) => !isFastTier(s.classOf(b)))
    s.native.build(fast, free, [...held, ...s.watch.watchedBlocks()], [...s.held.dirtyBlocks(), ...heldData, ...this.ram.blocksOf(entry.id)])
    this.register(entry)
  }

  /** No native I/O of the image from now on: its handles let go of the table, then it is retired. */
  stop(entry: ImageEntry): void {
    const n = entry.state.native
    if (!n?.active) return
    this.unregister(entry)
    foldNative(entry.state)
    n.retire()
  }

  /** Before a guest write is routed: a block-bitmap write may free blocks, which (new data held) are JavaScript's to write again. */
  beforeWrite(entry: ImageEntry, pos: number, len: number): void {
    const n = entry.state.native
    if (!n?.active || !this.holdNew) return
    for (const [s, c] of entry.map.bitmapCoverage(pos, len)) n.lower(s, c, NATIVE_READ)
  }

  /** After a guest write JavaScript served and did not hold back: the blocks it wrote to the HDD may be learnt (in the background). */
  afterWrite(entry: ImageEntry, pos: number, len: number): void {
    if (entry.state.native?.active) void learnWrites(entry, pos, len, this.holdNew)
  }
}

/** The binding's counters since the last call, into the image's counters, idle clock and last HDD write. */
export function foldNative(s: ImageState): void {
  if (!s.native) return
  const d = s.native.delta()
  if (!d.reads && !d.writes) return
  s.counters.nativeReads += d.reads
  s.counters.nativeWrites += d.writes
  s.counters.nativeReadBytes += d.readBytes
  s.counters.nativeWriteBytes += d.writeBytes
  // Only data blocks are native: their blocks count as data reads (from the HDD) and writes.
  const st = s.stat(BlockClass.Data)
  const rb = Math.ceil(d.readBytes / BLOCK)
  st.reads += rb
  st.hddReads += rb
  st.writes += Math.ceil(d.writeBytes / BLOCK)
  const last = Math.max(d.lastReadMs, d.lastWriteMs)
  if (last > s.lastGuestIo) s.lastGuestIo = last
  if (d.writes && d.lastWriteMs > s.lastHddWrite) s.lastHddWrite = d.lastWriteMs
}

/**
 * After a data write JavaScript served itself and did not hold back: the
 * blocks it wrote straight to the HDD file may be written natively from now on,
 * those the guest's bitmaps show allocated when new data is held.
 */
export async function learnWrites(entry: ImageEntry, pos: number, len: number, holdNew: boolean): Promise<void> {
  const s = entry.state
  if (!s.native || len <= 0) return
  const first = Math.floor(pos / BLOCK)
  const last = Math.floor((pos + len - 1) / BLOCK)
  for (let b = first; b <= last; b++) {
    if (s.routedAsMeta(b) || s.native.state(b) === NATIVE_RW) continue
    if (holdNew) {
      let free = true
      try {
        free = await entry.map.unallocated(b * BLOCK, BLOCK)
      } catch {
        /* unknown: stays with JavaScript */
      }
      if (free) continue
    }
    s.native?.learnWrite(b)
  }
}
