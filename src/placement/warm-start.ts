// Warm start (the paper's preload): after an image's scan, its meta-data goes
// to the SSD store (and RAM within budget) once, so lookups never wait for the
// HDD. Three sources, cheapest first: the blocks the scan itself read (kept
// copies, adopted without reading them again), the SSD store's copies from an
// earlier mount (RAM refill), then the HDD in sweeps in file order. RAM never
// evicts a higher class priority for a lower one, so it ends up holding what
// every lookup walks, whatever the order.
//
// State owned here: the copies the scan read (ScanKeeper), until adopted or
// dropped; any write of a block drops its copy (ImageState.onTouched).

import { BlockClass, isFastData, isFastTier, isMetadata, priorityOf } from '../introspect/classes'
import { log } from '../log'
import { BLOCK } from '../store/ram'
import { spansOf, type BlockRun } from './blocks'
import type { PreloadScheduler } from './schedule'
import { preadFull } from '../store/device'
import type { Progress } from './image'
import { ramWorthy, ZERO_BLOCK, type ImageState, type Router } from './image-state'

/** Largest preload read, in blocks (4 MiB). */
const PRELOAD_SPAN = 1024
/** Preload runs at most this many blocks apart are read as one request (256 KiB): on a disk a seek costs more than the gap's transfer. */
const PRELOAD_GAP = 64
/** RAM refill from the SSD store: point reads between yields to guest requests. */
const REFILL_CHUNK = 256

export type Want = (cls: BlockClass, block: number) => boolean

/** Copies of the blocks the scan read, kept until the preload adopts the meta-data among them. */
export class ScanKeeper {
  private kept: Map<number, Buffer> | null = null
  private max = 0

  constructor(
    private readonly s: ImageState,
    private readonly router: Router,
  ) {
    s.onTouched = (b) => this.kept?.delete(b)
  }

  /** From now on the scan's reads (read) keep copies of what they read, up to maxBytes. */
  keep(maxBytes: number): void {
    this.kept ??= new Map()
    this.max = Math.floor(maxBytes / BLOCK)
  }

  /** Stops keeping the scan's reads and drops the copies (a failed scan, an unlink, the end of the mount). */
  drop(): void {
    this.kept = null
  }

  /**
   * A read by the mount's own scan (not the guest's): served like any read,
   * and while keeping, a copy of every whole block no write touched meanwhile
   * is kept for adopt().
   */
  async read(buf: Buffer, len: number, pos: number): Promise<number> {
    const kept = this.kept
    if (!kept || len === 0) return this.router.read(buf, len, pos, false)
    const s = this.s
    const first = Math.ceil(pos / BLOCK)
    const end = Math.floor(Math.min(pos + len, s.size) / BLOCK)
    const w = s.watch.range(first, end)
    try {
      const n = await this.router.read(buf, len, pos, false)
      for (let b = first; b < end && (b + 1) * BLOCK <= pos + n; b++) {
        if (kept.size >= this.max || this.kept !== kept) break
        if (w.written(b) || s.held.isHeld(b) || kept.has(b)) continue
        // All-zero blocks (unused tables, holes: most of what a hostile image's scan reads) share
        // one buffer: a copy each would be one small allocation per block, and GC pauses.
        const blk = buf.subarray(b * BLOCK - pos, (b + 1) * BLOCK - pos)
        kept.set(b, blk.equals(ZERO_BLOCK) ? ZERO_BLOCK : Buffer.from(blk))
      }
      return n
    } finally {
      w.release()
    }
  }

  /**
   * The scan is done and the map current: the kept copies of meta-data blocks
   * `want`ed go to the SSD store and RAM (highest class priority first, as the
   * preload does) up to `limit` blocks (the SSD store's room), the rest are
   * dropped, and copies stop being kept. Returns how many were adopted.
   */
  adopt(want: Want = isFastTier, limit = Infinity): number {
    const s = this.s
    const kept = this.kept
    this.kept = null
    if (!kept || !s.canRedirect()) return 0
    const take: [number, BlockClass][] = []
    for (const b of kept.keys()) {
      const cls = s.classOf(b)
      if (isFastTier(cls) && want(cls, b) && !s.held.isHeld(b)) take.push([b, cls])
    }
    take.sort((x, y) => priorityOf(y[1]) - priorityOf(x[1]) || x[0] - y[0])
    if (take.length > limit) take.length = Math.max(0, limit)
    for (const [b, cls] of take) {
      const blk = kept.get(b)!
      s.held.putClean(b, blk, cls)
      if (ramWorthy(cls, blk)) s.ram.set(s.key(b), blk, s.ramPriority(cls), true)
    }
    s.counters.preloaded += take.length
    s.counters.scanKept += take.length
    return take.length
  }
}

/**
 * Copies fast-tier blocks of [start, start+count) whose class `want`s in from
 * the HDD file (one read; other blocks in the span are read and dropped) into
 * the SSD store and RAM, skipping blocks already held or written meanwhile.
 * Returns how many were copied.
 */
export async function preloadSpan(s: ImageState, start: number, count: number, want: Want = isFastTier): Promise<number> {
  const first = start
  const last = Math.min(start + count, Math.ceil(s.size / BLOCK))
  if (last <= first || !s.canRedirect()) return 0
  const w = s.watch.range(first, last)
  try {
    const buf = Buffer.allocUnsafe((last - first) * BLOCK)
    await preadFull(s.dev, buf, 0, buf.length, first * BLOCK)
    let n = 0
    for (let b = first; b < last; b++) {
      const cls = s.classOf(b)
      if (!isFastTier(cls) || !want(cls, b) || w.written(b) || s.held.isHeld(b)) continue
      const blk = buf.subarray((b - first) * BLOCK, (b - first + 1) * BLOCK)
      s.held.putClean(b, blk, cls)
      // All-zero blocks (unused inode-table space, empty bitmaps) go to the SSD store only.
      if (ramWorthy(cls, blk)) s.ram.set(s.key(b), blk, s.ramPriority(cls), true)
      n++
    }
    s.counters.preloaded += n
    return n
  } finally {
    w.release()
  }
}

/**
 * A restart with a warm SSD store: copies of the `want`ed fast-tier blocks the
 * store holds go to RAM, highest class priority first (as the preload leaves
 * it), until RAM is full. Point reads on this thread, a few hundred at a time
 * between guest requests; nothing awaits between a block's read and its
 * insertion, so a write of it cannot slip in between. Returns how many.
 */
export async function refillRam(s: ImageState, want: Want = isFastTier, stop: () => boolean = () => false): Promise<number> {
  if (s.ram.full) return 0
  const take: [number, BlockClass][] = []
  for (const b of s.held.heldBlocks()) {
    const cls = s.classOf(b)
    if (isFastTier(cls) && want(cls, b) && !s.ram.has(s.key(b))) take.push([b, cls])
  }
  take.sort((x, y) => priorityOf(y[1]) - priorityOf(x[1]) || x[0] - y[0])
  let n = 0
  for (let i = 0; i < take.length && !s.ram.full; i++) {
    if (i % REFILL_CHUNK === 0 && i > 0) {
      await new Promise((r) => setImmediate(r))
      if (stop() || s.ssd.failed) break
    }
    const [b, cls] = take[i]
    const key = s.key(b)
    // Written, dropped or reclassified since the list was made: the write path saw to it.
    if (!s.held.isHeld(b) || s.ram.has(key) || s.classOf(b) !== cls) continue
    const held = s.held.read(b)
    if (!held || !ramWorthy(cls, held.data)) continue
    s.ram.set(key, held.data, s.ramPriority(cls), true)
    n++
  }
  s.counters.ramRefilled += n
  return n
}

export interface WarmStartContext {
  rel: string
  state: ImageState
  keeper: ScanKeeper
  /** The map's runs, in file order. */
  runs: () => Iterable<[number, number, BlockClass]>
  /** Whole file blocks the preload may skip (inode-table space no inode uses yet: nothing to read). */
  skip: (block: number) => boolean
  /** The mount is closing, the image went, or the store cannot take more: stop. */
  stopped: () => boolean
  /** How many more blocks the SSD store may take now. */
  room: () => number
  /** The mount's preload queue (fair across images). */
  scheduler: PreloadScheduler
  /** Blocks of the HDD sweeps' spans read, of all planned (`vmdi-fuse status`). */
  progress?: Progress
  /** Its VM is starting (vm-start.ts): its meta-data and boot files go first, whether its guest pauses or not. */
  rush?: () => boolean
}

/**
 * The whole warm start of one image: the scan's copies adopted, RAM refilled
 * from the SSD store, then the rest read from the HDD in file order, runs less
 * than PRELOAD_GAP blocks apart read as one request, through the mount's
 * preload queue (schedule.ts: every image's meta-data before any image's small
 * and boot files' data, which is read only while its guest pauses: it can be
 * long, and is worth less than the guest's own I/O). The journal is not
 * preloaded: it is written all the time and read only at recovery, and its
 * blocks are cached as they are written.
 */
export async function warmStart(c: WarmStartContext): Promise<void> {
  const s = c.state
  const want: Want = (cls, b) => cls !== BlockClass.Journal && !c.skip(b)
  if (c.stopped()) {
    c.keeper.drop()
    return
  }
  const adopted = c.keeper.adopt(want, c.room())
  // A restart with a warm SSD store: RAM gets what it held, from the store, not the HDD.
  const t0 = Date.now()
  const refilled = await refillRam(s, want, c.stopped)
  if (refilled) log.info(`image ${c.rel}: warm start: ${refilled} block(s) copied to RAM from the SSD store in ${Date.now() - t0} ms (meta-data first, then small and boot files' data)`)
  // What is left to read: wanted blocks the SSD store does not hold yet; meta-data first (what
  // lookups need), then small and boot files' data, each in one sweep in file order.
  const plan = (pick: (cls: BlockClass) => boolean) => {
    const runs: BlockRun[] = []
    let missing = 0
    for (const [s0, c0, cls] of c.runs()) {
      if (cls === BlockClass.Journal || !pick(cls)) continue
      let runAt = -1
      for (let b = s0; b <= s0 + c0; b++) {
        const need = b < s0 + c0 && !s.held.isHeld(b) && !c.skip(b)
        if (need) {
          missing++
          if (runAt < 0) runAt = b
        } else if (runAt >= 0) {
          runs.push([runAt, b - runAt])
          runAt = -1
        }
      }
    }
    return { spans: spansOf(runs, PRELOAD_SPAN, PRELOAD_GAP), missing }
  }
  const meta = plan(isMetadata)
  if (adopted) log.info(`image ${c.rel}: warm start: ${adopted} meta-data block(s) kept from the scan's reads, ${meta.missing} to read`)
  const boot = plan((cls) => cls === BlockClass.BootFile)
  const small = plan((cls) => isFastData(cls) && cls !== BlockClass.BootFile)
  if (!meta.spans.length && !small.spans.length && !boot.spans.length) return
  let t1 = 0
  let smallBefore = 0
  const progress = c.progress
  if (progress) {
    progress.total = meta.missing + boot.missing + small.missing
    progress.startedMs ||= Date.now()
  }
  const complete = await c.scheduler.submit({
    meta: meta.spans,
    boot: boot.spans,
    small: small.spans,
    rush: c.rush,
    read: async ([start, count], phase) => {
      if (phase === 'small' && !t1) {
        t1 = Date.now()
        smallBefore = s.counters.preloaded
      }
      const pick = phase === 'meta' ? isMetadata : isFastData
      await preloadSpan(s, start, count, (cls, b) => pick(cls) && want(cls, b))
      // Spans include gaps and blocks held meanwhile: progress counts the planned blocks, capped.
      if (progress) progress.done = Math.min(progress.total, progress.done + count)
    },
    lastGuestIo: () => s.lastGuestIo,
    stopped: () => c.stopped() || c.room() <= 0,
  })
  if (small.missing + boot.missing === 0 || !t1) return
  const n = s.counters.preloaded - smallBefore
  log.info(`image ${c.rel}: small and boot files: ${n} data block(s) (${(n / 256).toFixed(1)} MiB) copied to the SSD store in ${Date.now() - t1} ms${complete ? '' : ' (stopped early: unmount, SSD store full or failed)'}`)
}
