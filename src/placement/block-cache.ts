// Benchmark configuration (f), `--cache-mode block-cache`: what a user would
// deploy instead of introspection, an SSD block cache (bcache, dm-cache,
// lvmcache) in write-back mode below the conventional array (b). No classes,
// no scan, no preload; RAM is (b)'s plain LRU with read-ahead (ConventionalRouter);
// below it the SSD store caches any block, with bcache's policy:
//
// - admission: the blocks a guest read fetched from the HDD (not the read-ahead)
//   are kept on the SSD store as clean copies; guest writes are written back:
//   RAM and the SSD store, dirty, destaged to the HDD later (destage.ts);
// - sequential bypass (bcache's sequential_cutoff, 4 MiB): a request that
//   continues a stream of the image which has reached the cutoff goes around
//   the SSD store: reads are served from a copy if there is one, else from
//   the HDD with nothing kept below RAM; writes go to the HDD, and the SSD
//   store's copies of their blocks go (a partial block with a dirty copy is
//   merged into that copy instead: the rest of its bytes exist nowhere else);
// - replacement: one LRU over the SSD-held blocks of every image of the mount,
//   capacity the SSD store's cap; room is made by dropping the least recently
//   used clean block; with every block dirty, a read is not admitted and a
//   write goes through to the HDD (bcache full of dirty data).
//
// State: the policy (one per mount) keeps its LRU order in step with the
// ledger's rows through ImageLedger.onRow, so rows dropped by anyone
// (truncate, destage, a crash's clean rows at attach, an unlink) leave it too.
// Writes run under the locks of all their blocks (ascending, as destage takes
// its runs): a destage in flight either wrote its older copy before a
// bypassing write's HDD write or finds the block no longer dirty.

import { BlockClass } from '../introspect/classes'
import { splitKey } from '../native/constants'
import { BLOCK } from '../store/ram'
import { preadFull } from '../store/device'
import { ConventionalRouter } from './conventional'
import type { ImageState } from './image-state'

/** bcache's default sequential_cutoff. */
export const SEQUENTIAL_CUTOFF = 4 << 20
/** A stream not continued for this long is forgotten (bcache: 5 s). */
const STREAM_MS = 5000
/** Streams remembered per image (bcache: RECENT_IO, 64). */
const STREAMS = 64

/** bcache's sequential detection: a request that starts where a recent one of the image ended continues its stream. */
export class SequentialCutoff {
  /** Running length in bytes, by the byte the stream's next request would start at; oldest first. */
  private readonly streams = new Map<number, { bytes: number; until: number }>()

  constructor(readonly cutoff = SEQUENTIAL_CUTOFF) {}

  /** A request of `len` bytes at `pos`: whether it bypasses the cache (its stream, it included, has reached the cutoff). */
  note(pos: number, len: number, now = Date.now()): boolean {
    const prev = this.streams.get(pos)
    const bytes = len + (prev && prev.until > now ? prev.bytes : 0)
    this.streams.delete(pos)
    this.streams.delete(pos + len)
    this.streams.set(pos + len, { bytes, until: now + STREAM_MS })
    if (this.streams.size > STREAMS) this.streams.delete(this.streams.keys().next().value as number)
    return this.cutoff > 0 && bytes >= this.cutoff
  }

  /**
   * Bytes [start, end) read without a request of ours (a block the binding answered from RAM):
   * they continue a stream that ends inside them (a request's tail in the block), or start one;
   * bytes a stream already covers change nothing.
   */
  noteRange(start: number, end: number, now = Date.now()): void {
    for (const [k, v] of this.streams) {
      if (v.until <= now) continue
      if (k >= start && k <= end) {
        this.streams.delete(k)
        this.streams.set(end, { bytes: v.bytes + end - k, until: now + STREAM_MS })
        return
      }
      if (k > end && k - v.bytes <= start) return
    }
    this.note(start, end - start, now)
  }
}

/**
 * Which blocks the SSD store holds for the mount's block cache, in LRU order,
 * and which of them are dirty (not evictable). Keys are blockKey(image, block);
 * `update` mirrors the ledger's rows; `makeRoom` is the admission decision.
 */
export class BlockCachePolicy {
  /** Clean blocks, least recently used first. */
  private readonly clean = new Map<number, true>()
  private readonly dirty = new Set<number>()
  /** Per image: drops its clean block b from the SSD store (false: it was not a clean row). */
  private readonly droppers = new Map<number, (b: number) => boolean>()

  /** @param capacity blocks the SSD store may hold (the --ssd-max cap). */
  constructor(readonly capacity: number) {}

  get size(): number {
    return this.clean.size + this.dirty.size
  }

  get dirtyCount(): number {
    return this.dirty.size
  }

  has(key: number): boolean {
    return this.clean.has(key) || this.dirty.has(key)
  }

  /** How image `image`'s evicted blocks leave the SSD store. */
  register(image: number, drop: (b: number) => boolean): void {
    this.droppers.set(image, drop)
  }

  /** The ledger's row of `key` changed: clean (most recently used), dirty, or gone. */
  update(key: number, row: 'clean' | 'dirty' | null): void {
    this.clean.delete(key)
    this.dirty.delete(key)
    if (row === 'clean') this.clean.set(key, true)
    else if (row === 'dirty') this.dirty.add(key)
  }

  /** A hit: a clean block becomes the most recently used (a dirty one is not evictable until destaged). */
  touch(key: number): void {
    if (!this.clean.delete(key)) return
    this.clean.set(key, true)
  }

  /** The blocks eviction would take for one more, least recently used first (none: room; null: no room, all dirty). */
  victims(key: number): number[] | null {
    if (this.has(key)) return []
    const need = this.size + 1 - this.capacity
    if (need <= 0) return []
    if (need > this.clean.size) return null
    const out: number[] = []
    for (const k of this.clean.keys()) {
      if (out.length === need) break
      out.push(k)
    }
    return out
  }

  /**
   * Room for block `key` on the SSD store: it is held already, there is room, or
   * the least recently used clean blocks are dropped until there is. False: every
   * block is dirty; nothing was dropped.
   */
  makeRoom(key: number): boolean {
    for (;;) {
      const out = this.victims(key)
      if (out === null) return false
      if (!out.length) return true
      for (const k of out) {
        this.clean.delete(k)
        const { image, block } = splitKey(k)
        // False: no clean row of it after all (the ledger's events keep that from happening): it is gone from here all the same.
        this.droppers.get(image)?.(block)
      }
    }
  }
}

/** The request path of an image in block-cache mode: (b)'s RAM LRU and read-ahead, the SSD block cache below. */
export class BlockCacheRouter extends ConventionalRouter {
  private readonly cutoff = new SequentialCutoff()

  constructor(
    state: ImageState,
    private readonly policy: BlockCachePolicy,
  ) {
    super(state)
    const s = state
    s.keepsDestaged = true
    // The rows the store kept (a remount): in the LRU in any order; from now on it follows the ledger.
    for (const b of s.held.heldBlocks()) policy.update(s.key(b), s.held.isDirty(b) ? 'dirty' : 'clean')
    s.held.onRow = (b, row) => policy.update(s.key(b), row)
    policy.register(s.image, (b) => {
      if (!s.held.dropClean(b)) return false
      s.counters.evicted++
      return true
    })
  }

  protected override admits(pos: number, n: number, guest: boolean): boolean {
    // The RAM hits the binding answered before this request first: the stream sees every request in order.
    if (guest) this.state.ram.drainNative?.()
    return guest && !this.cutoff.note(pos, n)
  }

  /** A block the binding answered from RAM: counted, and part of its stream (bcache sees every request). */
  override servedFromRam(b: number, at: number): void {
    super.servedFromRam(b, at)
    this.cutoff.noteRange(b * BLOCK, (b + 1) * BLOCK, at)
  }

  protected override fromCache(b: number, into: Buffer): boolean {
    const s = this.state
    const held = s.held.read(b)
    if (!held) return false
    held.data.copy(into, 0, 0, BLOCK)
    s.ram.set(s.key(b), into, 0, true)
    this.policy.touch(s.key(b))
    return true
  }

  protected override cached(b: number): boolean {
    return super.cached(b) || this.state.held.isHeld(b)
  }

  protected override hddCurrent(b: number): boolean {
    // A held block's copy comes from the SSD store (a dirty one is newer than the HDD's).
    return !this.state.held.isHeld(b)
  }

  protected override missed(b: number, blk: Buffer, admit: boolean): void {
    const s = this.state
    if (!admit) {
      s.counters.bypassed++
      return
    }
    if (s.canRedirect() && this.policy.makeRoom(s.key(b))) s.held.putClean(b, blk, BlockClass.Data)
  }

  /** Written back (RAM and the SSD store, dirty) while the cache has room; past the sequential cutoff, through to the HDD. */
  override async write(buf: Buffer, len: number, pos: number): Promise<number> {
    const s = this.state
    s.lastGuestIo = Date.now()
    if (len === 0) return 0
    if (pos + len > s.size) await s.grow(pos + len)
    s.ram.drainNative?.()
    const bypass = this.cutoff.note(pos, len)
    const first = Math.floor(pos / BLOCK)
    const blocks = Array.from({ length: Math.floor((pos + len - 1) / BLOCK) - first + 1 }, (_, i) => first + i)
    await s.watch.withLocks(blocks, () => this.writeLocked(buf, len, pos, blocks, bypass))
    return len
  }

  /** The write with all its blocks' locks held. */
  private async writeLocked(buf: Buffer, len: number, pos: number, blocks: number[], bypass: boolean): Promise<void> {
    const s = this.state
    const st = s.stat(BlockClass.Data)
    // Through blocks whose dirty copy is dropped once the HDD has the new bytes (not before: a crash
    // between would lose them), with the bytes RAM must hold then (null: none).
    const after: [number, Buffer | null][] = []
    let runFrom = -1 // a run of the request's bytes going through: [runFrom, runTo)
    let runTo = -1
    const flush = async () => {
      if (runFrom < 0) return
      const [from, to] = [runFrom, runTo]
      runFrom = runTo = -1
      await s.hddWrite(buf, from - pos, to - from, from)
    }
    for (const b of blocks) {
      const lo = Math.max(pos, b * BLOCK)
      const hi = Math.min(pos + len, (b + 1) * BLOCK)
      const whole = hi - lo === BLOCK
      const key = s.key(b)
      st.writes++
      s.watch.touched(b)
      let blk: Buffer | null = null
      if (whole) blk = buf.subarray(lo - pos, hi - pos)
      else if (s.held.isDirty(b) || (!bypass && s.canRedirect())) {
        // Written back, or a dirty block (its copy the only one of the rest of its bytes): the whole block first.
        blk = Buffer.allocUnsafe(BLOCK)
        await this.current(b, blk)
        buf.copy(blk, lo - b * BLOCK, lo - pos, hi - pos)
        st.rmwLoads++
      }
      // A dirty block is updated in place (no room needed; past the cutoff only when partly written);
      // another one needs the store to take writes (its cap of dirty blocks) and room in the LRU.
      const inPlace = s.held.isDirty(b) && !s.ssd.failed && (!bypass || !whole)
      const back = blk !== null && (inPlace || (!bypass && s.canRedirect() && this.policy.makeRoom(key)))
      if (back) {
        s.ram.set(key, blk!, 0, true)
        s.held.putDirty(b, blk!, BlockClass.Data)
        st.redirected++
        continue
      }
      if (bypass) s.counters.bypassed++
      else s.counters.writeThrough++
      // Through: RAM holds the new bytes (or none), a clean copy goes now, a dirty one after the HDD write.
      if (blk) s.ram.set(key, blk, 0, true)
      else s.ram.delete(key)
      if (s.held.isDirty(b)) after.push([b, blk])
      else s.held.dropClean(b)
      if (blk && !whole) {
        // A merged block (its copy could not be kept): the whole of it, in file bounds.
        await flush()
        await s.hddWrite(blk, 0, Math.min(BLOCK, s.size - b * BLOCK), b * BLOCK)
        continue
      }
      if (runFrom >= 0 && runTo !== lo) await flush()
      if (runFrom < 0) runFrom = lo
      runTo = hi
    }
    await flush()
    for (const [b, blk] of after) {
      s.held.drop(b)
      // A read may have copied the dirty bytes into RAM meanwhile.
      if (blk) s.ram.set(s.key(b), blk, 0, true)
      else s.ram.delete(s.key(b))
    }
  }

  /** Block b's current bytes (lock held): RAM, the SSD store, else the HDD file. */
  private async current(b: number, into: Buffer): Promise<void> {
    const s = this.state
    if (s.ram.get(s.key(b), into)) return
    const held = s.held.read(b)
    if (held) {
      held.data.copy(into, 0, 0, BLOCK)
      return
    }
    await preadFull(s.dev, into, 0, BLOCK, b * BLOCK)
  }
}
