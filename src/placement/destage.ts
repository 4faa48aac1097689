// Destage: dirty blocks back to the HDD file, in file order, consecutive
// blocks in one write (DESIGN.md invariant 3: the HDD image becomes whole
// again). Per image (Destager) and for the mount (the background tick, the
// SSD cap's eviction of clean copies, the failover when the store fails).

import { isFastTier, priorityOf, type BlockClass } from '../introspect/classes'
import { log } from '../log'
import { BLOCK } from '../store/ram'
import { foldRuns, type Watch } from './blocks'
import { fdatasync, pwriteFull } from '../store/device'
import type { ImageState } from './image-state'
import type { Ledger } from './ledger'

/** Longest destage write, in blocks (1 MiB). */
const DESTAGE_RUN = 256

/** A dirty block's bytes as the destage copied them, watched from then on. */
interface Copied {
  b: number
  data: Buffer
  w: Watch
}

export class Destager {
  /** The destage batch running now (batches run one at a time). */
  private running: Promise<unknown> = Promise.resolve()

  constructor(private readonly s: ImageState) {}

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
    const run = this.running.then(() => this.batch(limit))
    this.running = run.catch(() => undefined)
    return run
  }

  /** Every dirty block (or until `stop` says so). Returns how many. */
  async all(stop: () => boolean = () => false): Promise<number> {
    let n = 0
    while (!stop()) {
      const k = await this.destage(1024)
      if (!k) break
      n += k
    }
    return n
  }

  private async batch(limit: number): Promise<number> {
    const s = this.s
    const blocks = s.held.dirtyBlocks(limit)
    if (!blocks.length) return 0
    const done: Copied[] = []
    try {
      // Consecutive blocks go to the HDD in one write: one at a time, each would wait
      // most of a revolution on a disk for the sector it has just missed. Under the
      // blocks' locks: a write-through or redirected write of one is either before
      // (then it is clean, or its newer copy is what we write) or after (then it stays dirty).
      for (const [start, count] of foldRuns(blocks, DESTAGE_RUN)) {
        const run = Array.from({ length: count }, (_, i) => start + i)
        await s.watch.withLocks(run, () => this.writeRun(run, done))
      }
      await fdatasync(s.fd)
      let n = 0
      for (const { b, data, w } of done) {
        if (w.written(b) || !s.held.isDirty(b)) continue
        const cls = s.classOf(b)
        if (s.ssd.failed) s.held.notDirty(b) // the HDD has it (synced above); the store is going
        else if (isFastTier(cls) || s.keepsDestaged) s.held.markClean(b, data, cls)
        else {
          // Data held back (new allocations, or a block reclassified while dirty): the HDD is
          // its place now; the store keeps the fast tiers' blocks.
          s.held.drop(b)
        }
        n++
      }
      // A store failing meanwhile: the blocks are on the HDD (synced above) all the same.
      s.noteWrites()
      await s.ssd.commitUnlessFailed()
      s.counters.destaged += n
      return n
    } finally {
      for (const { w } of done) w.release()
    }
  }

  /** One run of consecutive blocks (their locks held): the still-dirty ones written to the HDD, contiguous ones in one write. */
  private async writeRun(run: number[], done: Copied[]): Promise<void> {
    const s = this.s
    let seg: Buffer[] = []
    let segStart = -1
    const flush = async () => {
      if (!seg.length) return
      const first = segStart
      const out = seg.length === 1 ? seg[0] : Buffer.concat(seg)
      seg = []
      const len = Math.min(out.length, s.size - first * BLOCK)
      if (len <= 0) return
      if (first === 0) await s.beforeBlockZero(out, 0)
      try {
        await pwriteFull(s.dev, out, 0, len, first * BLOCK)
      } finally {
        s.lastHddWrite = Date.now()
      }
    }
    for (const b of run) {
      const data = this.dirtyCopy(b)
      if (!data) {
        await flush()
        continue
      }
      if (!seg.length) segStart = b
      // Watched from the copy on: a write of it after this leaves it dirty.
      done.push({ b, data, w: s.watch.range(b, b + 1) })
      seg.push(data)
    }
    await flush()
  }

  /** A copy of dirty block b's current bytes (RAM holds the dirty copy when it has one: writes set both), or null if it is not dirty. */
  private dirtyCopy(b: number): Buffer | null {
    const s = this.s
    if (!s.held.isDirty(b)) return null
    const out = Buffer.allocUnsafe(BLOCK)
    if (s.ram.get(s.key(b), out)) return out
    const held = s.held.read(b)
    if (!held || !held.dirty) {
      s.held.notDirty(b)
      return null
    }
    held.data.copy(out, 0, 0, BLOCK)
    return out
  }
}

/** What the mount's background work needs of an attached image. */
export interface DestageTarget {
  rel: string
  state: ImageState
  destager: Destager
  /** Map updates in flight (a failover waits for them). */
  updating: Promise<void>
}

export interface BackgroundOptions {
  /** Blocks per image per tick (default 256). */
  blocks?: number
  /** How long guest I/O must have paused before an image is destaged (default 200 ms). */
  idleMs?: number
  /** The SSD store's cap, in blocks. */
  capBlocks: number
}

/** One tick of the background: rate-limited destage of images whose guests pause (all of them near the cap), then the cap's eviction. */
export async function backgroundTick(images: Iterable<DestageTarget>, ledger: Ledger, opts: BackgroundOptions): Promise<void> {
  const now = Date.now()
  const pressing = ledger.dirtyTotal >= opts.capBlocks * 0.8
  const list = [...images]
  for (const e of list) {
    if (!e.state.held.dirtyCount) continue
    if (!pressing && now - e.state.lastGuestIo < (opts.idleMs ?? 200)) continue
    await e.destager.destage(opts.blocks ?? 256)
  }
  if (ledger.heldTotal > opts.capBlocks) evictClean(list, ledger.heldTotal - Math.floor(opts.capBlocks * 0.9))
}

/** Drops clean SSD copies, lowest class priority first, until `n` are gone. */
function evictClean(images: DestageTarget[], n: number): void {
  for (let p = 0; p <= 4 && n > 0; p++) {
    for (const { state: s } of images) {
      for (const b of s.held.heldBlocks()) {
        if (n <= 0) break
        if (s.held.isDirty(b) || priorityOf(s.classOf(b) as BlockClass) !== p) continue
        s.held.drop(b)
        n--
      }
    }
  }
}

/**
 * The SSD store failed: what it held back goes to the HDD files. Returns
 * whether every image's blocks made it (then the store may be abandoned).
 */
export async function failover(images: Iterable<DestageTarget>, ssdPath: string): Promise<boolean> {
  let ok = true
  for (const e of images) {
    try {
      await e.updating
      await e.destager.all()
      e.state.held.clear()
    } catch (x) {
      ok = false
      log.error(`image ${e.rel}: writing its SSD-held blocks to the HDD after the store failed: ${(x as Error).message}; the SSD store ${ssdPath} is kept for recovery`)
    }
  }
  return ok
}
