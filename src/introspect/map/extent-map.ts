// A compact map from block number to BlockClass: sorted, non-overlapping runs
// of non-data blocks in three typed arrays (13 bytes per run, nothing per
// block). Data is the default: a block no run covers is data. The same class
// serves at fs-block granularity inside a file system scan and at 4 KiB
// granularity of a backing file in the folded per-file map.
//
// Invariants, kept by every mutation: runs sorted by start; no two runs
// overlap; two touching runs never share a class (they are merged); no run has
// class Data; every length is in 1..MAX_RUN.

import zlib from 'zlib'
import { BlockClass, priorityOf } from '../classes'

const MAX_RUN = 0xffff_ffff

export type Run = [start: number, count: number, cls: BlockClass]

export class ExtentMap {
  private starts: Float64Array
  private lens: Uint32Array
  private classes: Uint8Array
  private n = 0

  constructor(capacity = 16) {
    this.starts = new Float64Array(capacity)
    this.lens = new Uint32Array(capacity)
    this.classes = new Uint8Array(capacity)
  }

  /** Number of runs held. */
  get runCount(): number {
    return this.n
  }

  /** Bytes of RAM the runs take (capacity included: what the process really holds). */
  memoryBytes(): number {
    return this.starts.byteLength + this.lens.byteLength + this.classes.byteLength
  }

  /** Class of one block: O(log runs). */
  classOf(block: number): BlockClass {
    const i = this.indexAt(block)
    return i < 0 ? BlockClass.Data : (this.classes[i] as BlockClass)
  }

  /** Index of the run containing `block`, or -1. */
  private indexAt(block: number): number {
    let lo = 0
    let hi = this.n - 1
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1
      const s = this.starts[mid]
      if (block < s) hi = mid - 1
      else if (block >= s + this.lens[mid]) lo = mid + 1
      else return mid
    }
    return -1
  }

  /** First run index whose end is >= block (the run containing or touching `block` from the left, or the next one). */
  private lowerBound(block: number): number {
    let lo = 0
    let hi = this.n
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.starts[mid] + this.lens[mid] < block) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /** First run index whose start is > block. */
  private upperBound(block: number): number {
    let lo = 0
    let hi = this.n
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.starts[mid] <= block) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /** Gives blocks [start, start + count) the class `cls` (Data clears them). */
  set(start: number, count: number, cls: BlockClass): void {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 || count < 0) {
      throw new RangeError(`ExtentMap.set: bad range ${start}+${count}`)
    }
    if (count === 0) return
    const end = start + count
    const i = this.lowerBound(start)
    const j = this.upperBound(end)
    const pieces: Run[] = []
    for (let k = i; k < j; k++) {
      const s = this.starts[k]
      const e = s + this.lens[k]
      const c = this.classes[k] as BlockClass
      if (s < start) pieces.push([s, Math.min(e, start) - s, c])
      if (e > end) pieces.push([Math.max(s, end), e - Math.max(s, end), c])
    }
    if (cls !== BlockClass.Data) pieces.push([start, count, cls])
    pieces.sort((a, b) => a[0] - b[0])
    const merged: Run[] = []
    for (const p of pieces) {
      const last = merged[merged.length - 1]
      if (last && last[2] === p[2] && last[0] + last[1] === p[0]) last[1] += p[1]
      else merged.push([p[0], p[1], p[2]])
    }
    const out: Run[] = []
    for (const [s, c, k] of merged) {
      for (let off = 0; off < c; off += MAX_RUN) out.push([s + off, Math.min(MAX_RUN, c - off), k])
    }
    this.splice(i, j, out)
  }

  /** Sets `cls` on the blocks of the range that hold data or a class `rank` puts lower (default: priorityOf). */
  claim(start: number, count: number, cls: BlockClass, rank: (c: BlockClass) => number = priorityOf): void {
    const end = start + count
    const todo: [number, number][] = []
    let cur = start
    for (const [s, c, k] of this.runsIn(start, count)) {
      if (s > cur) todo.push([cur, s - cur])
      if (rank(k) < rank(cls)) todo.push([s, c])
      cur = s + c
    }
    if (cur < end) todo.push([cur, end - cur])
    for (const [s, c] of todo) this.set(s, c, cls)
  }

  private splice(i: number, j: number, runs: Run[]): void {
    const delta = runs.length - (j - i)
    if (this.n + delta > this.starts.length) this.grow(this.n + delta)
    if (delta !== 0 && j < this.n) {
      this.starts.copyWithin(j + delta, j, this.n)
      this.lens.copyWithin(j + delta, j, this.n)
      this.classes.copyWithin(j + delta, j, this.n)
    }
    for (let k = 0; k < runs.length; k++) {
      this.starts[i + k] = runs[k][0]
      this.lens[i + k] = runs[k][1]
      this.classes[i + k] = runs[k][2]
    }
    this.n += delta
  }

  private grow(min: number): void {
    const cap = Math.max(min, Math.ceil(this.starts.length * 1.5), 16)
    const s = new Float64Array(cap)
    s.set(this.starts.subarray(0, this.n))
    const l = new Uint32Array(cap)
    l.set(this.lens.subarray(0, this.n))
    const c = new Uint8Array(cap)
    c.set(this.classes.subarray(0, this.n))
    this.starts = s
    this.lens = l
    this.classes = c
  }

  /** Drops spare capacity (after a bulk build). */
  trim(): void {
    if (this.starts.length === this.n) return
    this.starts = this.starts.slice(0, this.n)
    this.lens = this.lens.slice(0, this.n)
    this.classes = this.classes.slice(0, this.n)
  }

  /** All runs in block order. */
  *runs(): IterableIterator<Run> {
    for (let k = 0; k < this.n; k++) yield [this.starts[k], this.lens[k], this.classes[k] as BlockClass]
  }

  /** Runs overlapping [start, start + count), clipped to it. */
  *runsIn(start: number, count: number): IterableIterator<Run> {
    const end = start + count
    for (let k = this.lowerBound(start); k < this.n && this.starts[k] < end; k++) {
      const s = Math.max(this.starts[k], start)
      const e = Math.min(this.starts[k] + this.lens[k], end)
      if (e > s) yield [s, e - s, this.classes[k] as BlockClass]
    }
  }

  /** Blocks per class (data not counted: it is whatever the runs leave). */
  countByClass(): Map<BlockClass, number> {
    const m = new Map<BlockClass, number>()
    for (let k = 0; k < this.n; k++) {
      const c = this.classes[k] as BlockClass
      m.set(c, (m.get(c) ?? 0) + this.lens[k])
    }
    return m
  }

  /**
   * Builds a map from runs in any order, possibly overlapping. Where runs
   * overlap the class `rank` puts higher wins (default priorityOf; ties: the
   * run that starts first, then the one given first), so a block claimed as
   * both a superblock backup and, by a corrupt inode, file meta-data stays a
   * superblock. With a rank that is a total order (sharedBlockRank: the
   * per-file fold) the result is the per-block maximum, whatever the order.
   */
  static fromRuns(runs: Iterable<Run>, rank: (c: BlockClass) => number = priorityOf): ExtentMap {
    const list: Run[] = []
    for (const r of runs) if (r[1] > 0 && r[2] !== BlockClass.Data) list.push(r)
    list.sort((a, b) => a[0] - b[0] || rank(b[2]) - rank(a[2]))
    const m = new ExtentMap(Math.max(16, list.length))
    for (const [s, c, k] of list) {
      const tailEnd = m.n > 0 ? m.starts[m.n - 1] + m.lens[m.n - 1] : 0
      if (s >= tailEnd) m.set(s, c, k) // the common case: past everything so far
      else m.claim(s, c, k, rank)
    }
    m.trim()
    return m
  }

  // ---- serialisation: stable and versioned (the datapath persists maps) ----
  // Layout, little-endian: magic "VMDIMAP\0" (8), u32 version, u32 blockSize,
  // u32 runCount, u32 crc32 of the run bytes, then runCount records of
  // f64 start, u32 count, u8 class (13 bytes each).

  static readonly MAGIC = Buffer.from('VMDIMAP\0', 'latin1')
  static readonly VERSION = 1
  static readonly HEADER_SIZE = 24
  static readonly RECORD_SIZE = 13

  serialize(blockSize: number): Buffer {
    const body = Buffer.alloc(this.n * ExtentMap.RECORD_SIZE)
    for (let k = 0; k < this.n; k++) {
      const o = k * ExtentMap.RECORD_SIZE
      body.writeDoubleLE(this.starts[k], o)
      body.writeUInt32LE(this.lens[k], o + 8)
      body.writeUInt8(this.classes[k], o + 12)
    }
    const head = Buffer.alloc(ExtentMap.HEADER_SIZE)
    ExtentMap.MAGIC.copy(head, 0)
    head.writeUInt32LE(ExtentMap.VERSION, 8)
    head.writeUInt32LE(blockSize, 12)
    head.writeUInt32LE(this.n, 16)
    head.writeUInt32LE(zlib.crc32(body), 20)
    return Buffer.concat([head, body])
  }

  static deserialize(buf: Buffer): { map: ExtentMap; blockSize: number } {
    if (buf.length < ExtentMap.HEADER_SIZE) throw new Error(`map: expected at least ${ExtentMap.HEADER_SIZE} bytes, saw ${buf.length}`)
    if (!buf.subarray(0, 8).equals(ExtentMap.MAGIC)) throw new Error('map: bad magic')
    const version = buf.readUInt32LE(8)
    if (version !== ExtentMap.VERSION) throw new Error(`map: version ${version} is not supported (expected ${ExtentMap.VERSION})`)
    const blockSize = buf.readUInt32LE(12)
    const n = buf.readUInt32LE(16)
    const body = buf.subarray(ExtentMap.HEADER_SIZE)
    if (body.length !== n * ExtentMap.RECORD_SIZE) throw new Error(`map: expected ${n * ExtentMap.RECORD_SIZE} run bytes, saw ${body.length}`)
    if (zlib.crc32(body) !== buf.readUInt32LE(20)) throw new Error('map: checksum mismatch')
    const m = new ExtentMap(Math.max(16, n))
    let prevEnd = -1
    for (let k = 0; k < n; k++) {
      const o = k * ExtentMap.RECORD_SIZE
      const s = body.readDoubleLE(o)
      const c = body.readUInt32LE(o + 8)
      const cls = body.readUInt8(o + 12)
      if (!Number.isSafeInteger(s) || s < prevEnd || c === 0 || cls === BlockClass.Data) {
        throw new Error(`map: run ${k} (${s}+${c} class ${cls}) breaks the order`)
      }
      m.starts[k] = s
      m.lens[k] = c
      m.classes[k] = cls
      prevEnd = s + c
    }
    m.n = n
    return { map: m, blockSize }
  }
}
