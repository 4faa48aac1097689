// Block bookkeeping shared by one image's request path, warm start and
// destage: runs of consecutive blocks, per-block locks, and watches (did a
// write land on this block while I was reading it?).
//
// Concurrency (everything runs on the Node main thread, but requests
// interleave at every await): meta-data-routed writes and write-backs of one
// block run one at a time under its lock; a reader that must not cache or
// clean stale bytes watches the blocks it reads and checks `written` after
// its I/O. An HDD write in flight marks every watch of its block written, at
// its start and at its end, so a read that overlaps it in any way is seen.

/** [first block, count] */
export type BlockRun = [number, number]

/**
 * Folds ascending block numbers into runs: consecutive blocks (or, with `gap`,
 * blocks at most `gap` apart, the run then covering the gap) of at most
 * `maxLen` blocks each.
 */
export function foldRuns(blocks: Iterable<number>, maxLen = Infinity, gap = 0): BlockRun[] {
  const out: BlockRun[] = []
  for (const b of blocks) {
    const last = out[out.length - 1]
    if (last && b >= last[0] + last[1] && b - (last[0] + last[1]) <= gap && b + 1 - last[0] <= maxLen) last[1] = b + 1 - last[0]
    else out.push([b, 1])
  }
  return out
}

/** Folds runs (ascending, not overlapping) into spans for reading: runs at most `gap` apart join, no span over `maxLen` blocks. */
export function spansOf(runs: Iterable<BlockRun>, maxLen: number, gap: number): BlockRun[] {
  const out: BlockRun[] = []
  for (const [s, c] of runs) {
    const last = out[out.length - 1]
    if (last && s - (last[0] + last[1]) <= gap && s + c - last[0] <= maxLen) last[1] = s + c - last[0]
    else if (c > maxLen) for (let b = s; b < s + c; b += maxLen) out.push([b, Math.min(maxLen, s + c - b)])
    else out.push([s, c])
  }
  return out
}

interface WatchState {
  n: number
  written: boolean
}

/** Watches on a set of blocks: `written(b)` after the reader's I/O says whether to drop what it read. */
export class Watch {
  constructor(
    private readonly owner: BlockWatch,
    private readonly states: Map<number, WatchState>,
  ) {}

  written(b: number): boolean {
    return this.states.get(b)?.written ?? false
  }

  /** Ends the watch (always, in a finally). */
  release(): void {
    for (const [b, w] of this.states) this.owner.unwatch(b, w)
    this.states.clear()
  }
}

export class BlockWatch {
  private readonly locks = new Map<number, Promise<void>>()
  private readonly watched = new Map<number, WatchState>()
  private readonly hddWrites = new Map<number, number>()

  /**
   * Told of blocks [first, end) before a watch of them starts, i.e. before the
   * watcher's HDD read: the native data path stops native writes of them there
   * (native-data.ts), so what the watcher keeps cannot miss one.
   */
  onWatch: ((first: number, end: number) => void) | null = null

  /** @param onTouched told of every block written (by any path), e.g. to drop a kept copy. */
  constructor(private readonly onTouched: (b: number) => void = () => undefined) {}

  /** Watches blocks [first, end). */
  range(first: number, end: number): Watch {
    if (end > first) this.onWatch?.(first, end)
    const m = new Map<number, WatchState>()
    for (let b = first; b < end; b++) m.set(b, this.watchOne(b))
    return new Watch(this, m)
  }

  /** Watches the given blocks. */
  blocks(list: Iterable<number>): Watch {
    const m = new Map<number, WatchState>()
    for (const b of list) {
      if (m.has(b)) continue
      this.onWatch?.(b, b + 1)
      m.set(b, this.watchOne(b))
    }
    return new Watch(this, m)
  }

  private watchOne(b: number): WatchState {
    let w = this.watched.get(b)
    if (!w) this.watched.set(b, (w = { n: 0, written: false }))
    w.n++
    // A write of it to the HDD still in flight: what a read returns now may be older.
    if (this.hddWrites.has(b)) w.written = true
    return w
  }

  /** Whether a watch of block b is open (a load that may keep what it reads). */
  isWatched(b: number): boolean {
    return this.watched.has(b)
  }

  /** The blocks watched now. */
  watchedBlocks(): number[] {
    return [...this.watched.keys()]
  }

  /** @internal */
  unwatch(b: number, w: WatchState): void {
    if (--w.n === 0 && this.watched.get(b) === w) this.watched.delete(b)
  }

  /** Block b was written (any tier): watches of it see it. */
  touched(b: number): void {
    const w = this.watched.get(b)
    if (w) w.written = true
    this.onTouched(b)
  }

  /** Every watched block from `first` on is touched (the file was truncated). */
  touchedFrom(first: number): void {
    for (const b of [...this.watched.keys()]) if (b >= first) this.touched(b)
  }

  /** An HDD write of block b starts (a read racing it must not cache what it read). */
  beginHddWrite(b: number): void {
    this.hddWrites.set(b, (this.hddWrites.get(b) ?? 0) + 1)
    this.touched(b)
  }

  endHddWrite(b: number): void {
    const n = (this.hddWrites.get(b) ?? 1) - 1
    if (n > 0) this.hddWrites.set(b, n)
    else this.hddWrites.delete(b)
    this.touched(b)
  }

  /** Runs fn with block b's lock held (meta-data writes and write-backs of one block, one at a time). */
  withLock<T>(b: number, fn: () => Promise<T>): Promise<T> {
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

  /** Runs fn with the locks of `blocks` held, taken in the given order (callers pass ascending runs: one lock order). */
  withLocks<T>(blocks: number[], fn: () => Promise<T>, i = 0): Promise<T> {
    if (i >= blocks.length) return fn()
    return this.withLock(blocks[i], () => this.withLocks(blocks, fn, i + 1))
  }
}
