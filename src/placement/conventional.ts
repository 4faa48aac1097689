// The conventional array (benchmark configuration (b), the paper's baseline):
// no classes, no SSD store; the RAM budget is a plain LRU of every block read
// or written, filled with Linux-style sequential read-ahead; writes go
// through to the HDD file. The same interface as the introspecting router, so
// the datapath and the binding treat both alike. Every RAM copy is servable:
// the binding's RAM index answers reads of cached blocks on the libfuse
// threads, as it does for (c). The SSD block cache
// (block-cache.ts, configuration (f)) is this array with a cache below its
// RAM: the read path's hooks below are where it plugs in.

import { BlockClass } from '../introspect/classes'
import { BLOCK } from '../store/ram'
import { preadFull, pwriteFull } from '../store/device'
import { countServedFromRam, copyPart, ImageState, syncImage, type Router } from './image-state'
import { ReadAhead } from './router'

export class ConventionalRouter implements Router {
  protected readonly ra = new ReadAhead()

  constructor(readonly state: ImageState) {}

  /** Every block through the LRU; a miss reads the block and the read-ahead window in one request. */
  async read(buf: Buffer, len: number, pos: number, guest = true): Promise<number> {
    const s = this.state
    if (guest) s.lastGuestIo = Date.now()
    const n = Math.max(0, Math.min(len, s.size - pos))
    if (n === 0) return 0
    const st = s.stat(BlockClass.Data)
    const first = Math.floor(pos / BLOCK)
    const last = Math.floor((pos + n - 1) / BLOCK)
    // RAM hits the binding answered never reach us: a miss right after a cached block continues a stream.
    const sequential = this.ra.note(first, last, s.ram.mirrored && first > 0 && s.ram.has(s.key(first - 1)))
    const admit = this.admits(pos, n, guest)
    const tmp = Buffer.allocUnsafe(BLOCK)
    for (let b = first; b <= last; ) {
      st.reads++
      if (s.ram.get(s.key(b), tmp)) {
        st.ramHits++
        copyPart(tmp, b, buf, pos, n)
        b++
        continue
      }
      if (this.fromCache(b, tmp)) {
        st.ssdHits++
        copyPart(tmp, b, buf, pos, n)
        b++
        continue
      }
      // A miss: this block, the rest of the request's missing run, and the read-ahead window.
      let end = b + 1
      while (end <= last && !this.cached(end)) end++
      const fileBlocks = Math.ceil(s.size / BLOCK)
      const raEnd = Math.min(fileBlocks, Math.max(end, (sequential ? end : b) + this.ra.window))
      const w = s.watch.range(b, raEnd)
      try {
        const chunk = Buffer.allocUnsafe((raEnd - b) * BLOCK)
        await preadFull(s.dev, chunk, 0, chunk.length, b * BLOCK)
        st.hddReads += end - b
        for (let k = b; k < raEnd; k++) {
          const blk = chunk.subarray((k - b) * BLOCK, (k - b + 1) * BLOCK)
          if (!w.written(k) && this.hddCurrent(k)) {
            s.ram.set(s.key(k), blk, 0, true)
            if (k < end) this.missed(k, blk, admit)
          }
          if (k < end) copyPart(blk, k, buf, pos, n)
        }
        st.reads += end - b - 1
      } finally {
        w.release()
      }
      b = end
    }
    return n
  }

  // Hooks for a cache below the RAM tier (block-cache.ts); the conventional array has none.

  /** Whether a request's blocks read from the HDD may be kept below RAM (decided once per request, before its first await). */
  protected admits(_pos: number, _n: number, _guest: boolean): boolean {
    return false
  }

  /** A copy of block b from below RAM, into `into` (and RAM); false: none. */
  protected fromCache(_b: number, _into: Buffer): boolean {
    return false
  }

  /** Whether a read need not fetch block b from the HDD (a copy is cached). */
  protected cached(b: number): boolean {
    return this.state.ram.has(this.state.key(b))
  }

  /** Whether the HDD file's bytes of block b are its current ones (no newer copy below RAM). */
  protected hddCurrent(_b: number): boolean {
    return true
  }

  /** A requested block read from the HDD on a miss, not written meanwhile (`admit`: the request's admits()). */
  protected missed(_b: number, _blk: Buffer, _admit: boolean): void {
    /* nothing below RAM */
  }

  /** Write-through; the LRU keeps whole blocks written, drops partly written ones. */
  async write(buf: Buffer, len: number, pos: number): Promise<number> {
    const s = this.state
    s.lastGuestIo = Date.now()
    if (len === 0) return 0
    if (pos + len > s.size) s.size = pos + len
    const st = s.stat(BlockClass.Data)
    for (let b = Math.floor(pos / BLOCK); b <= Math.floor((pos + len - 1) / BLOCK); b++) {
      st.writes++
      s.watch.touched(b)
      const lo = Math.max(pos, b * BLOCK)
      const hi = Math.min(pos + len, (b + 1) * BLOCK)
      if (hi - lo === BLOCK) s.ram.set(s.key(b), buf.subarray(lo - pos, hi - pos), 0, true)
      else s.ram.delete(s.key(b))
    }
    await pwriteFull(s.dev, buf, 0, len, pos)
    s.lastHddWrite = Date.now()
    return len
  }

  fsync(): Promise<void> {
    return syncImage(this.state)
  }

  truncate(size: number): Promise<void> {
    return this.state.truncate(size)
  }

  reclassified(): void {
    /* no classes */
  }

  servedFromRam(b: number, at: number): void {
    countServedFromRam(this.state, b, at)
  }
}
