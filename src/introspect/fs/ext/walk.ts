// Walking inodes' block maps breadth-first: every level's mapping blocks of
// every inode are read together as sorted, coalesced reads, so a scan costs
// a few large reads per level instead of one small read per block (the
// paper's scanner did single 4 KiB reads). Iterative, depth-capped, and a
// mapping block reached twice is a counted skip (loops end).

import { BlockClass } from '../../classes'
import type { ScanBudget } from '../../budget'
import type { Reader } from '../../reader'
import { extentEntries, extentHeader, EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, type Inode, MAX_EXTENT_DEPTH, S_IFLNK, S_IFMT } from './inode'

export interface WalkSink {
  /** A meta-data block run of inode `ino` (mapping blocks, or data of a meta-data inode). */
  meta(start: number, count: number, cls: BlockClass, ino: number, logical?: number): void
  /** A data block run (only reported when the walk asks for all data). */
  data?(start: number, count: number, ino: number, logical: number): void
  skip(reason: string): void
  /** Called every few thousand inodes or mapping blocks: a long walk yields the event loop there. */
  tick?(): Promise<void>
}

export interface WalkTarget {
  inode: Inode
  /** Class of the inode's data blocks, or null for file data. */
  dataClass: BlockClass | null
}

interface Task {
  kind: 'ind' | 'ext'
  block: number
  /** ind: 1 = IND, 2 = DIND, 3 = TIND; ext: depth the node must declare. */
  level: number
  ino: number
  dataClass: BlockClass | null
  /** First logical block this node maps (indirect only). */
  logical: number
}

export interface BlockSource {
  readonly blockSize: number
  readonly blocksCount: number
  readBlocks(blocks: number[]): Promise<Map<number, Buffer>>
}

/** Reads sorted, coalesced runs of blocks with bounded concurrency. */
export class CoalescingReader implements BlockSource {
  bytesRead = 0
  reads = 0
  constructor(
    private readonly r: Reader,
    readonly blockSize: number,
    readonly blocksCount: number,
    private readonly maxRead: number,
    private readonly concurrency: number,
    /** Counts every byte read against the scan's budget (throws past it, before reading). */
    private readonly budget?: ScanBudget,
  ) {}

  async readRuns(runs: [number, number][]): Promise<Buffer[]> {
    const out: Buffer[] = new Array(runs.length)
    let next = 0
    const worker = async () => {
      while (next < runs.length) {
        const k = next++
        const [s, c] = runs[k]
        this.budget?.read(c * this.blockSize, `reading ${c} ext block(s) at block ${s}`)
        out[k] = await this.r.read(s * this.blockSize, c * this.blockSize)
        this.bytesRead += c * this.blockSize
        this.reads++
      }
    }
    await Promise.all(Array.from({ length: Math.min(this.concurrency, runs.length) }, worker))
    return out
  }

  async readBlocks(blocks: number[]): Promise<Map<number, Buffer>> {
    const uniq = [...new Set(blocks)].sort((a, b) => a - b)
    const per = Math.max(1, Math.floor(this.maxRead / this.blockSize))
    const runs: [number, number][] = []
    for (const b of uniq) {
      const last = runs[runs.length - 1]
      if (last && last[0] + last[1] === b && last[1] < per) last[1]++
      else runs.push([b, 1])
    }
    const bufs = await this.readRuns(runs)
    const m = new Map<number, Buffer>()
    runs.forEach(([s, c], k) => {
      for (let i = 0; i < c; i++) m.set(s + i, bufs[k].subarray(i * this.blockSize, (i + 1) * this.blockSize))
    })
    return m
  }
}

/** Walks the block maps of `targets`. With `allData` every data run is reported too (objectsAt). */
export async function walkInodes(src: BlockSource, targets: Iterable<WalkTarget>, sink: WalkSink, allData = false, seen = new Set<number>()): Promise<void> {
  const bs = src.blockSize
  const ptrs = bs / 4
  const valid = (b: number, n = 1) => b > 0 && b + n <= src.blocksCount
  let tasks: Task[] = []

  const dataRun = (ino: number, dataClass: BlockClass | null, start: number, count: number, logical: number) => {
    if (!valid(start, count)) {
      sink.skip(`inode ${ino}: data blocks ${start}+${count} are outside the file system`)
      return
    }
    if (dataClass !== null) sink.meta(start, count, dataClass, ino, logical)
    else sink.data?.(start, count, ino, logical)
  }
  const wants = (dataClass: BlockClass | null) => allData || dataClass !== null
  const mapping = (t: Task, cls: BlockClass): boolean => {
    if (!valid(t.block)) {
      sink.skip(`inode ${t.ino}: mapping block ${t.block} is outside the file system`)
      return false
    }
    if (seen.has(t.block)) {
      sink.skip(`inode ${t.ino}: mapping block ${t.block} is referenced twice (a loop or cross-link)`)
      return false
    }
    seen.add(t.block)
    sink.meta(t.block, 1, cls, t.ino)
    return true
  }

  let n = 0
  for (const { inode, dataClass } of targets) {
    if ((++n & 4095) === 0) await sink.tick?.()
    const ino = inode.ino
    if (inode.flags & EXT4_INLINE_DATA_FL) continue
    // Fast symlinks keep the target in i_block.
    if ((inode.mode & S_IFMT) === S_IFLNK && !(inode.flags & EXT4_EXTENTS_FL) && inode.size < 60) continue
    if (inode.flags & EXT4_EXTENTS_FL) {
      const h = extentHeader(inode.block, 0)
      if (!h || h.depth > MAX_EXTENT_DEPTH) {
        sink.skip(`inode ${ino}: bad extent header in the inode`)
        continue
      }
      for (const e of extentEntries(inode.block, 0, h)) {
        if (h.depth === 0) dataRun(ino, dataClass, e.start, e.len, e.logical)
        else {
          const t: Task = { kind: 'ext', block: e.start, level: h.depth - 1, ino, dataClass, logical: e.logical }
          if (mapping(t, BlockClass.ExtentTree) && (t.level > 0 || wants(dataClass))) tasks.push(t)
        }
      }
      continue
    }
    for (let k = 0; k < 12; k++) {
      const b = inode.block.readUInt32LE(k * 4)
      if (b) dataRun(ino, dataClass, b, 1, k)
    }
    let base = 12
    for (let level = 1; level <= 3; level++) {
      const b = inode.block.readUInt32LE((11 + level) * 4)
      if (b) {
        const t: Task = { kind: 'ind', block: b, level, ino, dataClass, logical: base }
        if (mapping(t, BlockClass.Indirect) && (level > 1 || wants(dataClass))) tasks.push(t)
      }
      base += ptrs ** level
    }
  }

  for (let round = 0; tasks.length && round < 8; round++) {
    const bufs = await src.readBlocks(tasks.map((t) => t.block))
    const next: Task[] = []
    for (const t of tasks) {
      if ((++n & 4095) === 0) await sink.tick?.()
      const b = bufs.get(t.block) as Buffer
      if (t.kind === 'ind') {
        const span = ptrs ** (t.level - 1)
        for (let k = 0; k < ptrs; k++) {
          const c = b.readUInt32LE(k * 4)
          if (!c) continue
          const logical = t.logical + k * span
          if (t.level === 1) dataRun(t.ino, t.dataClass, c, 1, logical)
          else {
            const child: Task = { kind: 'ind', block: c, level: t.level - 1, ino: t.ino, dataClass: t.dataClass, logical }
            if (mapping(child, BlockClass.Indirect) && (child.level > 1 || wants(t.dataClass))) next.push(child)
          }
        }
      } else {
        const h = extentHeader(b, 0)
        if (!h || h.depth !== t.level || h.max > (bs - 12) / 12) {
          sink.skip(`inode ${t.ino}: extent node ${t.block} has ${h ? `depth ${h.depth}, expected ${t.level}` : 'no extent magic'}`)
          continue
        }
        for (const e of extentEntries(b, 0, h)) {
          if (h.depth === 0) dataRun(t.ino, t.dataClass, e.start, e.len, e.logical)
          else {
            const child: Task = { kind: 'ext', block: e.start, level: h.depth - 1, ino: t.ino, dataClass: t.dataClass, logical: e.logical }
            if (mapping(child, BlockClass.ExtentTree) && (child.level > 0 || wants(t.dataClass))) next.push(child)
          }
        }
      }
    }
    tasks = next
  }
  if (tasks.length) sink.skip(`${tasks.length} mapping blocks deeper than the format allows were not followed`)
}
