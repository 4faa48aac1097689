// The request path of one introspected image (DESIGN.md, src/placement):
// splits each request into 4 KiB blocks of the image file, asks the class of
// each, and serves meta-data from RAM, then the SSD store, then the HDD file
// (keeping what it read on both), while data goes straight to the HDD file in
// coalesced pread/pwrite. Meta-data writes are redirected: RAM and the SSD
// store, marked dirty, never the HDD until destage (destage.ts). Small and
// boot files' data, when the mount places it with the meta-data
// (--small-files, --boot-files), is routed exactly like meta-data: "meta-data"
// below means every fast-tier class (isFastTier). So are data writes the
// caller found newly allocated (--new-data: `absorb`), which then stay dirty,
// and routed so, until destaged.
//
// State: the block state is the image's (image-state.ts: the ledger's
// held/dirty sets, locks and watches, stats); the router owns only its
// read-ahead window and the recent data writes (for the deferred count).
// Meta-data-routed writes of one block run one at a time under its lock, so a
// partial write's read-modify-write never loses a concurrent write; a load
// that read a block before a write to it landed never caches what it read.

import { BlockClass, isFastTier } from '../introspect/classes'
import { BLOCK } from '../store/ram'
import { preadFull } from '../store/device'
import { countServedFromRam, ImageState, syncImage, type Router } from './image-state'
import { NATIVE_NONE } from './native-data'

/** Read-ahead, in blocks: Linux's initial and maximum window (128 KiB). */
const RA_MIN = 4
const RA_MAX = 32

/** Data-routed writes remembered for the deferred count (oldest forgotten past this). */
const RECENT_DATA_MAX = 65536

/** Linux-style sequential detection: a read that starts where the last one ended doubles the window. */
export class ReadAhead {
  private next = -1
  window = RA_MIN

  /**
   * Records a read of blocks [first, last]; whether it continues the previous one.
   * `context`: the caller knows the block before `first` was just read (it is cached, and
   * reads of cached blocks were answered without it: Linux's context read-ahead).
   */
  note(first: number, last: number, context = false): boolean {
    const sequential = context || first === this.next || first === this.next - 1
    this.window = sequential ? Math.min(RA_MAX, this.window * 2) : RA_MIN
    this.next = last + 1
    return sequential
  }
}

export class ImageRouter implements Router {
  private readonly recentData = new Set<number>()
  private readonly ra = new ReadAhead()

  constructor(readonly state: ImageState) {}

  /**
   * The current bytes of one meta-data-routed block: RAM, then SSD, then HDD (kept on both).
   * `forRead` false: a partial write completing its block; counted as `rmwLoads` by the caller, not as a hit.
   */
  private async loadBlock(b: number, cls: BlockClass, into: Buffer, forRead = true): Promise<void> {
    const s = this.state
    const key = s.key(b)
    const st = forRead ? s.stat(cls) : { ramHits: 0, ssdHits: 0, hddReads: 0 }
    if (s.ram.get(key, into)) {
      st.ramHits++
      return
    }
    const held = s.held.read(b)
    if (held) {
      held.data.copy(into, 0, 0, BLOCK)
      s.ram.set(key, into, s.ramPriority(cls), true)
      st.ssdHits++
      return
    }
    const w = s.watch.range(b, b + 1)
    try {
      await preadFull(s.dev, into, 0, BLOCK, b * BLOCK)
      st.hddReads++
      // A write that landed meanwhile made what we read stale: return it, keep nothing.
      if (w.written(b) || s.held.isDirty(b)) {
        if (s.held.isDirty(b) || s.ram.has(key)) return this.loadBlock(b, cls, into, forRead)
        return
      }
      s.ram.set(key, into, s.ramPriority(cls), true)
      if (isFastTier(cls) && s.canRedirect()) s.held.putClean(b, into, cls)
    } finally {
      w.release()
    }
  }

  servedFromRam(b: number, at: number): void {
    countServedFromRam(this.state, b, at)
  }

  async read(buf: Buffer, len: number, pos: number, guest = true): Promise<number> {
    if (!guest) return this.readBlocks(buf, len, pos, false)
    return this.state.guestRequest(() => this.readBlocks(buf, len, pos, true))
  }

  private async readBlocks(buf: Buffer, len: number, pos: number, guest: boolean): Promise<number> {
    const s = this.state
    const n = Math.max(0, Math.min(len, s.size - pos))
    if (n === 0) return 0
    // Sequential data reads get Linux-style read-ahead into RAM at the lowest priority:
    // it never displaces meta-data, and uses what the budget has left, as an array would.
    const firstBlock = Math.floor(pos / BLOCK)
    const lastBlock = Math.floor((pos + n - 1) / BLOCK)
    if (guest) s.onGuestRead?.(firstBlock, lastBlock)
    // With the native data path the binding reads data blocks itself: no read-ahead copies for it to miss.
    const sequential = guest && !s.native?.built && this.ra.note(firstBlock, lastBlock)
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
        const fileBlocks = Math.floor(s.size / BLOCK)
        while (to < from + this.ra.window && to < fileBlocks && !s.routedAsMeta(to) && !s.ram.has(s.key(to))) to++
      }
      if (to === from) {
        await preadFull(s.dev, buf, s0 - pos, l0, s0)
        // Served from the HDD with nothing kept: the binding may serve these reads itself.
        if (s.native) for (let k = Math.floor(s0 / BLOCK); k <= Math.floor((s0 + l0 - 1) / BLOCK); k++) s.native.learnRead(k)
        return
      }
      const w = s.watch.range(from, to)
      try {
        const chunk = Buffer.allocUnsafe(to * BLOCK - s0)
        await preadFull(s.dev, chunk, 0, chunk.length, s0)
        chunk.copy(buf, s0 - pos, 0, l0)
        for (let k = from; k < to; k++) {
          if (w.written(k) || s.routedAsMeta(k)) continue
          const at = k * BLOCK - s0
          s.ram.set(s.key(k), chunk.subarray(at, at + BLOCK), 0)
          s.counters.readAhead++
        }
      } finally {
        w.release()
      }
    }
    let tmp: Buffer | null = null
    for (let at = pos; at < pos + n; ) {
      const b = Math.floor(at / BLOCK)
      const end = Math.min((b + 1) * BLOCK, pos + n)
      const cls = s.classOf(b)
      const st = s.stat(cls)
      st.reads++
      if (!s.routedAsMeta(b, cls)) {
        // A read-ahead copy, if RAM has one (get, not has: the copy can go at any await).
        tmp ??= Buffer.allocUnsafe(BLOCK)
        if (runLen === 0 && s.ram.get(s.key(b), tmp)) {
          tmp.copy(buf, at - pos, at - b * BLOCK, end - b * BLOCK)
          st.ramHits++
        } else if (s.held.isHeld(b)) {
          // A clean copy on the SSD store (a learnt boot set's block, vm-start.ts): it, not the HDD.
          await flushRun(false)
          const held = s.held.read(b)
          if (held) {
            held.data.copy(buf, at - pos, at - b * BLOCK, end - b * BLOCK)
            st.ssdHits++
          } else {
            runStart = at
            runLen = end - at
            st.hddReads++
          }
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

  write(buf: Buffer, len: number, pos: number, absorb = false): Promise<number> {
    return this.state.guestRequest(() => this.writeBlocks(buf, len, pos, absorb))
  }

  private async writeBlocks(buf: Buffer, len: number, pos: number, absorb: boolean): Promise<number> {
    const s = this.state
    if (len === 0) return 0
    if (pos + len > s.size) {
      // Grow the HDD file first, so its size is the file's size whichever tier holds the bytes.
      await s.grow(pos + len)
    }
    let runStart = -1
    let runLen = 0
    // Asked once a request (it reads the mount-wide total); writeMeta asks again per block and writes through if it must.
    const hold = absorb && s.canRedirect()
    const flushRun = async () => {
      if (!runLen) return
      const at = runStart
      const n = runLen
      runLen = 0
      runStart = -1
      await s.hddWrite(buf, at - pos, n, at)
    }
    for (let at = pos; at < pos + len; ) {
      const b = Math.floor(at / BLOCK)
      const end = Math.min((b + 1) * BLOCK, pos + len)
      const cls = s.classOf(b)
      s.stat(cls).writes++
      if (!s.routedAsMeta(b, cls) && !hold) {
        // Data: straight to the HDD; copies from an earlier class must not outlive it.
        s.watch.touched(b)
        s.dropCopies(b)
        this.rememberData(b)
        if (runLen === 0) runStart = at
        runLen += end - at
      } else {
        await flushRun()
        s.watch.touched(b)
        await s.watch.withLock(b, () => this.writeMeta(b, cls, buf, at - pos, end - at, at - b * BLOCK))
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
    const s = this.state
    const st = s.stat(cls)
    const blk = Buffer.allocUnsafe(BLOCK)
    if (n < BLOCK) {
      await this.loadBlock(b, cls, blk, false) // a partial write keeps the rest of the block
      st.rmwLoads++
    }
    src.copy(blk, blkAt, srcAt, srcAt + n)
    s.watch.touched(b)
    const key = s.key(b)
    if (s.canRedirect()) {
      if (!isFastTier(cls) && !s.held.isDirty(b)) s.counters.absorbed++
      s.ram.set(key, blk, s.ramPriority(cls), true)
      s.held.putDirty(b, blk, cls)
      st.redirected++
      return
    }
    // Write-through: the whole block to the HDD, which becomes the authority again.
    await s.hddWrite(blk, 0, Math.min(BLOCK, s.size - b * BLOCK), b * BLOCK)
    s.ram.set(key, blk, s.ramPriority(cls), true)
    s.held.drop(b)
    s.counters.writeThrough++
  }

  fsync(): Promise<void> {
    return syncImage(this.state)
  }

  /**
   * The map changed the class of blocks [start, start+count). Blocks becoming
   * meta-data are promoted (their HDD copy is loaded on first use or by
   * preload); blocks leaving it drop their clean copies, while dirty ones stay
   * authoritative until destaged.
   */
  reclassified(start: number, count: number, from: BlockClass, to: BlockClass): void {
    const s = this.state
    s.counters.reclassified += count
    const wasMeta = isFastTier(from)
    const nowMeta = isFastTier(to)
    // Before anything routes them as meta-data: native I/O of them ends, none starts.
    if (nowMeta && !wasMeta) s.native?.lower(start, count, NATIVE_NONE)
    for (let b = start; b < start + count; b++) {
      if (!wasMeta && nowMeta) {
        s.counters.promoted++
        if (this.recentData.delete(b)) s.counters.deferred++
      } else if (wasMeta && !nowMeta && !s.held.isDirty(b)) {
        s.dropCopies(b)
      }
    }
  }

  truncate(size: number): Promise<void> {
    return this.state.truncate(size)
  }
}
