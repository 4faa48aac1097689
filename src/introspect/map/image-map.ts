// One image's map for placement (DESIGN.md, "Wave 2: one image map per
// virtual disk"): the class of every 4 KiB block of the image file, kept true
// while the guest writes, and what placement asks besides: whether a write
// must be learnt from, whether a write lands in space the guest has just
// allocated, which blocks a preload may skip, and the state saved at a clean
// unmount. Placement sees file blocks (4 KiB of the image file, FILE_BLOCK)
// and classes only; volumes, file-system blocks and guest offsets stay here.
//
// Built by the inspect pipeline: ImageMap.fromInspection(inspectImage(...),
// path) takes the fold's map of that file (inspect.ts foldMaps) and keeps the
// Inspection for the live updates; ImageMap.empty() (no scan yet, or it
// failed: every block data) and ImageMap.fromSaved(bytes) (a saved map:
// classes only) stand in until a scan is done.
//
// Two seams, for what comes next:
//
// - Files. A virtual disk can be several files: a split VMDK's extents, a
//   chain's overlays and bases. Every internal step names its file as a
//   FileRef (layer of the chain + index into that layer's files, geometry.ts)
//   and keeps one ExtentMap per mapped file (MappedFile); the geometry walks
//   go both ways through any layer (fileToGuest counts a base's bytes only
//   where no overlay shadows them). Today one file is mapped, the one named
//   to fromInspection (the datapath's: file 0 of the top layer), and the
//   public methods act on it; mapping more is a public `file` argument away.
//   Not done yet for lower files: a write to an overlay that shadows a base's
//   bytes does not reclassify the base's blocks (no guest writes a base).
//
// - File systems. What the map needs of one is ClassifiedFs below: its block
//   size, its class runs in fs blocks, update() of written fs blocks (called
//   before they land) → the fs runs whose class changed, unallocated() from
//   its allocation bitmaps, its unused inode-table (MFT, inode B-tree) runs,
//   and exportState() for the clean-unmount record. ExtFs implements it; an
//   NTFS or XFS scanner that does is folded, learnt from and saved the same
//   way once inspect.ts lists it in Inspection.filesystems.
//
// A 4 KiB file block shared by bytes of several classes takes the class of
// classes.ts sharedBlockClass, in the fold (ExtentMap.fromRuns with
// sharedBlockRank) and here (fileBlockClass) alike: one rule, a total order.

import { BlockClass, isMetadata, sharedBlockClass } from '../classes'
import type { Inspection } from '../inspect'
import type { Reader } from '../reader'
import { diskToVolume, volumeToDisk, type Volume } from '../volume'
import { ExtentMap, type Run } from './extent-map'
import { FILE_BLOCK } from './fold'
import { fileToGuest, guestToFiles, layersOf, type FileRef } from './geometry'

/** A run of file blocks (4 KiB of the image file) whose class a write changed. */
export interface ClassChange {
  start: number
  count: number
  from: BlockClass
  to: BlockClass
}

/** A run of fs blocks whose class changed. */
export interface FsChange {
  fsBlock: number
  count: number
  from: BlockClass
  to: BlockClass
}

/** What the image map needs of a scanned file system (see the header). */
export interface ClassifiedFs {
  /** Bytes per fs block. */
  readonly blockSize: number
  /** Non-data class runs, in fs blocks, in block order. */
  runs(): Iterable<Run>
  /** The same, clipped to fs blocks [start, start + count). */
  runsIn(start: number, count: number): Iterable<Run>
  /** Whole fs blocks from `fsBlock` are about to be written with `bytes` (not yet readable): the runs whose class that changes. */
  update(fsBlock: number, bytes: Buffer): Promise<FsChange[]>
  /** Whether every fs block of [start, start + count) is free in the allocation bitmaps as they are now. */
  unallocated(start: number, count: number): Promise<boolean>
  /** Every run [start, count] of fs blocks unallocated() answers true for, to `each` in ascending order, in pieces small enough to map between yields (ext: never across a group); yields to the event loop at least every `yieldMs` ms. */
  freeRuns(each: (start: number, count: number) => void, yieldMs?: number): Promise<void>
  /** The fs blocks whose allocation the bitmap blocks among fs blocks [start, start + count) record, as ascending merged runs [start, count]; empty when none lies there. */
  bitmapCover(start: number, count: number): [number, number][]
  /** Inode-table space no inode uses yet, in fs blocks: meta-data, but nothing to read ahead. */
  unusedInodeTableRuns(): Iterable<Run>
  /** What a later restore of the same, unchanged file system needs instead of a scan. */
  exportState(): Buffer
}

export interface ImageMapOptions {
  /** Told when a write could not be learnt from and the map was left as it was (default: silent). */
  warn?: (message: string) => void
}

/** One mapped file: its place in the chain (null: no inspection, classes only) and its classes in 4 KiB blocks. */
interface MappedFile {
  ref: FileRef | null
  path: string
  map: ExtentMap
  /** Whole file blocks of unused inode-table space (built at the first preloadSkip). */
  unused: ExtentMap | null
}

/** Image bytes that one scanned file system holds: the file byte of its first byte, and its byte range in the volume. */
interface FsPiece {
  volume: Volume
  fs: ClassifiedFs
  /** File byte holding volume byte `vlo` (a compressed piece: the first of the stored bytes asked about). */
  at: number
  vlo: number
  vhi: number
}

export class ImageMap {
  private queue: Promise<unknown> = Promise.resolve()

  private constructor(
    /** The mapped files; [0] is the image file the public methods act on. */
    private readonly files: MappedFile[],
    readonly inspection: Inspection | null,
    private readonly warn: (message: string) => void,
  ) {}

  /** Whether the map comes from a scan of the file system (false: empty or saved classes only, nothing learnt from writes). */
  get scanned(): boolean {
    return this.inspection !== null
  }

  /** No scan yet, or it failed: every block is data. */
  static empty(): ImageMap {
    return new ImageMap([{ ref: null, path: '', map: new ExtentMap(), unused: null }], null, () => undefined)
  }

  /** A map saved by serialize() (classes only, until a scan replaces it). Throws when the bytes are not one. */
  static fromSaved(saved: Buffer): ImageMap {
    const { map, blockSize } = ExtentMap.deserialize(saved)
    if (blockSize !== FILE_BLOCK) throw new Error(`map: expected ${FILE_BLOCK}-byte blocks, saw ${blockSize}`)
    return new ImageMap([{ ref: null, path: '', map, unused: null }], null, () => undefined)
  }

  /** The map of `file` (an absolute path among the image's files: the image file itself for the datapath) from a scan. */
  static fromInspection(ins: Inspection, file: string, opts: ImageMapOptions = {}): ImageMap {
    if (!ins.fileMaps) throw new Error(`${file}: the inspection was made without a file-system scan (scan: false): no map to take`)
    const folded = ins.fileMaps.find((m) => m.path === file)
    const layer = layersOf(ins.disk).find((d) => d.files.includes(file))
    if (!folded || !layer) throw new Error(`${file} is not a file of the image ${ins.report.image}`)
    return new ImageMap([{ ref: { layer, file: layer.files.indexOf(file) }, path: file, map: folded.map, unused: null }], ins, opts.warn ?? (() => undefined))
  }

  private get top(): MappedFile {
    return this.files[0]
  }

  classOf(block: number): BlockClass {
    return this.top.map.classOf(block)
  }

  /** Non-data runs [start, count, class] in block order. */
  runs(): Iterable<Run> {
    return this.top.map.runs()
  }

  /** Blocks per class (data not counted). */
  countByClass(): Map<BlockClass, number> {
    return this.top.map.countByClass()
  }

  /** Bytes of RAM the maps take. */
  memoryBytes(): number {
    return this.files.reduce((a, f) => a + f.map.memoryBytes() + (f.unused?.memoryBytes() ?? 0), 0)
  }

  /** The classes, for fromSaved (ExtentMap format, 4 KiB blocks). */
  serialize(): Buffer {
    return this.top.map.serialize(FILE_BLOCK)
  }

  /** Whether a write to blocks [firstBlock, lastBlock] must go through applyWrite first: it touches meta-data of a scanned map. */
  needsLearning(firstBlock: number, lastBlock: number): boolean {
    if (!this.inspection) return false
    for (const [, , cls] of this.top.map.runsIn(firstBlock, lastBlock - firstBlock + 1)) if (isMetadata(cls)) return true
    return false
  }

  /**
   * The guest is about to write `bytes` at byte `pos` of the image file (call
   * it BEFORE the bytes land: the file systems diff against the current
   * ones). Container tables first (a new grain-table entry maps guest bytes
   * anew), then every file system the write covers (whole fs blocks: the
   * write over the current bytes). Returns the runs of file blocks whose
   * class changed, in block order, and holds the new classes (what it
   * returns is always what changed in the map). Calls run one at a time. A
   * write a container or a file system cannot learn from is reported to
   * `warn` and leaves that part's map as it was; the rest is still learnt.
   */
  applyWrite(pos: number, bytes: Buffer): Promise<ClassChange[]> {
    const run = this.queue.then(() => this.learn(this.top, pos, bytes))
    this.queue = run.catch(() => undefined)
    return run
  }

  private async learn(f: MappedFile, pos: number, bytes: Buffer): Promise<ClassChange[]> {
    const ins = this.inspection
    const ref = f.ref
    if (!ins || !ref || bytes.length === 0) return []
    const touched = new Set<number>()
    const touch = (g: number, n: number) => {
      for (const p of guestToFiles(ins.disk, g, n)) {
        if (p.layer !== ref.layer || p.file !== ref.file || p.fileLength <= 0) continue
        for (let b = Math.floor(p.fileOffset / FILE_BLOCK); b <= Math.floor((p.fileOffset + p.fileLength - 1) / FILE_BLOCK); b++) touched.add(b)
      }
    }
    try {
      for (const r of await ref.layer.applyWrite(ref.file, pos, bytes)) touch(r.offset, r.length)
    } catch (e) {
      this.warn(`container table write at byte ${pos} not understood (${(e as Error).message}): map left as it was`)
    }
    for (const p of [...fsPieces(ins, ref, pos, bytes.length, false)]) {
      const { volume, fs } = p
      try {
        const bs = fs.blockSize
        const fb0 = Math.floor(p.vlo / bs)
        const fb1 = Math.ceil(p.vhi / bs)
        const from = p.at - pos
        const to = from + (p.vhi - p.vlo)
        let whole: Buffer
        if (p.vlo === fb0 * bs && p.vhi === fb1 * bs) whole = bytes.subarray(from, to)
        else {
          whole = await volumeRead(ins.disk, volume, fb0 * bs, (fb1 - fb0) * bs)
          bytes.copy(whole, p.vlo - fb0 * bs, from, to)
        }
        for (const ch of await fs.update(fb0, whole)) {
          for (const q of volumeToDisk(volume, ch.fsBlock * bs, ch.count * bs)) touch(q.diskOffset, q.length)
        }
      } catch (e) {
        this.warn(`file system in volume ${volume.index}: the write at byte ${pos} not learnt from (${(e as Error).message}): its map left as it was`)
      }
    }
    const changes: ClassChange[] = []
    for (const b of [...touched].sort((a, c) => a - c)) {
      const from = f.map.classOf(b)
      const to = classOfFileBlock(ins, ref, b)
      if (from === to) continue
      f.map.set(b, 1, to)
      const last = changes[changes.length - 1]
      if (last && last.start + last.count === b && last.from === from && last.to === to) last.count++
      else changes.push({ start: b, count: 1, from, to })
    }
    return changes
  }

  /**
   * Whether every byte of image bytes [pos, pos + len) lies in a scanned file
   * system, in blocks its bitmaps show free now: data the guest has just
   * allocated (its bitmaps reach their home blocks only at a checkpoint). A
   * bitmap that cannot be read answers no.
   */
  async unallocated(pos: number, len: number): Promise<boolean> {
    const ref = this.top.ref
    if (!this.inspection || !ref || len <= 0) return false
    let covered = 0
    try {
      for (const p of fsPieces(this.inspection, ref, pos, len, false)) {
        const bs = p.fs.blockSize
        const f0 = Math.floor(p.vlo / bs)
        if (!(await p.fs.unallocated(f0, Math.ceil(p.vhi / bs) - f0))) return false
        covered += p.vhi - p.vlo
      }
    } catch {
      return false
    }
    return covered === len
  }

  /**
   * The file blocks that are wholly new-data space now: runs [firstBlock,
   * count] of the image file, ascending and merged, such that every byte of
   * each block lies in a scanned file system in fs blocks its bitmaps show
   * free (what unallocated() answers true for, block by block). Each file
   * system's bitmaps are read once (ClassifiedFs.freeRuns); free fs runs go
   * volume → disk → file (guestToFiles: a qcow2 or VMDK stores clusters
   * anywhere), and only uncompressed pieces of this file count. Memory goes
   * with the number of runs; the Node main thread is yielded to
   * (setImmediate) at least every `yieldMs` ms (default 5). A bitmap that
   * cannot be read makes its group in use; no scan: [].
   */
  async freeFileRuns(opts: { yieldMs?: number } = {}): Promise<Array<[number, number]>> {
    const ins = this.inspection
    const ref = this.top.ref
    if (!ins || !ref) return []
    const yieldMs = opts.yieldMs ?? 5
    let last = performance.now()
    const tick = async () => {
      if (performance.now() - last < yieldMs) return
      await new Promise((r) => setImmediate(r))
      last = performance.now()
    }
    // File byte spans [lo, hi), merged with the previous one when they touch (a raw image's runs come in file order).
    let spans: [number, number][] = []
    let sorted = true
    const add = (lo: number, hi: number) => {
      const prev = spans[spans.length - 1]
      if (prev && lo >= prev[0] && lo <= prev[1]) prev[1] = Math.max(prev[1], hi)
      else {
        if (prev && lo < prev[1]) sorted = false
        spans.push([lo, hi])
      }
    }
    for (const { volume, fs } of ins.filesystems) {
      const bs = fs.blockSize
      try {
        await fs.freeRuns((s, c) => fileSpans(ins, ref, volume, s * bs, c * bs, add), yieldMs)
      } catch (e) {
        this.warn(`file system in volume ${volume.index}: its free blocks not read (${(e as Error).message}): none counted free`)
      }
      await tick()
    }
    if (!sorted) spans = await sortSpans(spans, tick)
    const out: [number, number][] = []
    for (let i = 0, k = 0; i < spans.length; k++) {
      let [lo, hi] = spans[i++]
      while (i < spans.length && spans[i][0] <= hi) hi = Math.max(hi, spans[i++][1])
      if ((k & 0xffff) === 0xffff) await tick()
      const b0 = Math.ceil(lo / FILE_BLOCK)
      const b1 = Math.floor(hi / FILE_BLOCK)
      if (b1 <= b0) continue
      const prev = out[out.length - 1]
      if (prev && prev[0] + prev[1] === b0) prev[1] += b1 - b0
      else out.push([b0, b1 - b0])
    }
    return out
  }

  /**
   * A write of image bytes [pos, pos + len) that touches the home of a
   * block bitmap of a scanned file system (flex_bg: several groups' bitmaps
   * in one block) changes what freeFileRuns() answers for the blocks those
   * bitmaps record: those groups' fs blocks as runs [firstBlock, count] of
   * this file (ascending, merged; every file block holding a byte of them,
   * partly covered ones too). [] when the write touches no bitmap: a bitmap's
   * file block is meta-data in the map, so a write over data only is one
   * lookup.
   */
  bitmapCoverage(pos: number, len: number): Array<[number, number]> {
    const ins = this.inspection
    const ref = this.top.ref
    if (!ins || !ref || len <= 0) return []
    const first = Math.floor(pos / FILE_BLOCK)
    let meta = false
    for (const [, , cls] of this.top.map.runsIn(first, Math.floor((pos + len - 1) / FILE_BLOCK) - first + 1)) {
      if (cls === BlockClass.Data) continue
      meta = true
      break
    }
    if (!meta) return []
    const spans: [number, number][] = []
    const add = (lo: number, hi: number) => {
      spans.push([Math.floor(lo / FILE_BLOCK), Math.ceil(hi / FILE_BLOCK)])
    }
    for (const p of fsPieces(ins, ref, pos, len, false)) {
      const bs = p.fs.blockSize
      const f0 = Math.floor(p.vlo / bs)
      for (const [s, c] of p.fs.bitmapCover(f0, Math.ceil(p.vhi / bs) - f0)) fileSpans(ins, ref, p.volume, s * bs, c * bs, add)
    }
    spans.sort((a, b) => a[0] - b[0])
    const out: [number, number][] = []
    for (const [b0, b1] of spans) {
      const prev = out[out.length - 1]
      if (prev && b0 <= prev[0] + prev[1]) prev[1] = Math.max(prev[1], b1 - prev[0])
      else out.push([b0, b1 - b0])
    }
    return out
  }

  /** Whether file block `block` is wholly unused inode-table space: meta-data with nothing to read ahead (the set is made at the first call, after the scan). */
  preloadSkip(block: number): boolean {
    const f = this.top
    if (!this.inspection || !f.ref) return false
    f.unused ??= unusedBlocks(this.inspection, f.ref)
    return f.unused.classOf(block) !== BlockClass.Data
  }

  /**
   * The clean-unmount record: u32 length + JSON {mtimeNs (a decimal string),
   * size, volumes (Volume.index of each file system)}, then each file
   * system's exportState() as u32 length + bytes, in that order. The format
   * is on disk (the SSD store): keep it byte for byte.
   */
  cleanRecord(mtimeNs: bigint, size: number): Buffer {
    const states = (this.inspection?.filesystems ?? []).map((f) => ({ volume: f.volume.index, state: f.fs.exportState() }))
    const head = Buffer.from(JSON.stringify({ mtimeNs: String(mtimeNs), size, volumes: states.map((x) => x.volume) }))
    const parts: Buffer[] = [u32(head.length), head]
    for (const x of states) parts.push(u32(x.state.length), x.state)
    return Buffer.concat(parts)
  }

  /** A cleanRecord() read back: the file's mtime and size then, and the saved states by volume index (InspectOptions.restore); null when the bytes are not one (truncated, or with bytes after the last state). */
  static parseCleanRecord(b: Buffer): { mtimeNs: bigint; size: number; states: Map<number, Buffer> } | null {
    try {
      const n = b.readUInt32LE(0)
      const head = JSON.parse(b.subarray(4, 4 + n).toString()) as { mtimeNs: string; size: number; volumes: number[] }
      const states = new Map<number, Buffer>()
      let at = 4 + n
      for (const v of head.volumes) {
        const len = b.readUInt32LE(at)
        if (at + 4 + len > b.length) return null
        states.set(v, b.subarray(at + 4, at + 4 + len))
        at += 4 + len
      }
      if (at !== b.length) return null
      return { mtimeNs: BigInt(head.mtimeNs), size: head.size, states }
    } catch {
      return null
    }
  }

  /** Closes the inspection's files (nothing for an empty or saved map). */
  async close(): Promise<void> {
    await this.inspection?.close()
  }
}

/**
 * The class of 4 KiB block `block` of `file` (an absolute path among the
 * image's files), computed from the inspection byte by byte: the class
 * sharedBlockClass gives the classes of its bytes (container meta-data,
 * partition tables, file-system runs). What the fold gives every block at
 * once; the live map asks it for the blocks a write touched.
 */
export function fileBlockClass(ins: Inspection, file: string, block: number): BlockClass {
  const layer = layersOf(ins.disk).find((d) => d.files.includes(file))
  if (!layer) throw new Error(`${file} is not a file of the image ${ins.report.image}`)
  return classOfFileBlock(ins, { layer, file: layer.files.indexOf(file) }, block)
}

function classOfFileBlock(ins: Inspection, f: FileRef, b: number): BlockClass {
  let best = BlockClass.Data
  const lo = b * FILE_BLOCK
  const hi = lo + FILE_BLOCK
  if (containerRegionIn(f, lo, hi)) best = BlockClass.Container
  for (const p of fileToGuest(ins.disk, f, lo, FILE_BLOCK)) {
    for (const r of ins.layout.regions) {
      if (r.offset < p.guestOffset + p.guestLength && p.guestOffset < r.offset + r.length) best = sharedBlockClass(best, BlockClass.PartitionTable)
    }
  }
  for (const p of fsPieces(ins, f, lo, FILE_BLOCK, true)) {
    const bs = p.fs.blockSize
    const f0 = Math.floor(p.vlo / bs)
    for (const [, , cls] of p.fs.runsIn(f0, Math.ceil(p.vhi / bs) - f0)) best = sharedBlockClass(best, cls)
  }
  return best
}

/** Whether a container meta-data region of `f`'s layer lies in bytes [lo, hi) of the file (regions are sorted by file, then offset). */
function containerRegionIn(f: FileRef, lo: number, hi: number): boolean {
  const list = f.layer.regions()
  let a = 0
  let z = list.length
  while (a < z) {
    const mid = (a + z) >>> 1
    const r = list[mid]
    if (r.file < f.file || (r.file === f.file && r.offset + r.length <= lo)) a = mid + 1
    else z = mid
  }
  const r = list[a]
  return r !== undefined && r.file === f.file && r.offset < hi
}

/** The pieces of bytes [pos, pos + len) of `f` that scanned file systems hold (compressed grains too when `compressed`). */
function* fsPieces(ins: Inspection, f: FileRef, pos: number, len: number, compressed: boolean): Generator<FsPiece> {
  for (const p of fileToGuest(ins.disk, f, pos, len)) {
    if (p.compressed && !compressed) continue
    for (const { volume, fs } of ins.filesystems) {
      for (const q of diskToVolume(volume, p.guestOffset, p.guestLength)) {
        yield { volume, fs, at: p.compressed ? p.fileOffset : p.fileOffset + (q.diskOffset - p.guestOffset), vlo: q.volumeOffset, vhi: q.volumeOffset + q.length }
      }
    }
  }
}

/** The bytes [lo, hi) of `f` (uncompressed pieces only) that store volume bytes [offset, offset + length), to `each`. */
function fileSpans(ins: Inspection, f: FileRef, volume: Volume, offset: number, length: number, each: (lo: number, hi: number) => void): void {
  for (const q of volumeToDisk(volume, offset, length)) {
    for (const p of guestToFiles(ins.disk, q.diskOffset, q.length)) {
      if (p.layer === f.layer && p.file === f.file && !p.compressed && p.fileLength > 0) each(p.fileOffset, p.fileOffset + p.fileLength)
    }
  }
}

/** Spans sorted by start, a chunk sorted or merged at a time with `tick` between (a million spans never hold the thread at once). Exported for tests. */
export async function sortSpans(spans: [number, number][], tick: () => Promise<void>): Promise<[number, number][]> {
  const CHUNK = 8192
  let parts: [number, number][][] = []
  for (let i = 0; i < spans.length; i += CHUNK) {
    parts.push(spans.slice(i, i + CHUNK).sort((a, b) => a[0] - b[0]))
    await tick()
  }
  while (parts.length > 1) {
    const next: [number, number][][] = []
    for (let k = 0; k < parts.length; k += 2) {
      const a = parts[k]
      const b = parts[k + 1]
      if (!b) {
        next.push(a)
        continue
      }
      const m: [number, number][] = new Array(a.length + b.length)
      let i = 0
      let j = 0
      for (let o = 0; o < m.length; o++) {
        m[o] = j >= b.length || (i < a.length && a[i][0] <= b[j][0]) ? a[i++] : b[j++]
        if ((o & 0x3fff) === 0x3fff) await tick()
      }
      next.push(m)
    }
    parts = next
  }
  return parts[0] ?? []
}

/** Whole file blocks of `f` that unused inode-table space fills. */
function unusedBlocks(ins: Inspection, f: FileRef): ExtentMap {
  const spans: [number, number][] = []
  for (const { volume, fs } of ins.filesystems) {
    const bs = fs.blockSize
    for (const [s, c] of fs.unusedInodeTableRuns()) {
      for (const q of volumeToDisk(volume, s * bs, c * bs)) {
        for (const p of guestToFiles(ins.disk, q.diskOffset, q.length)) {
          if (p.layer === f.layer && p.file === f.file && !p.compressed) spans.push([p.fileOffset, p.fileOffset + p.fileLength])
        }
      }
    }
  }
  // Whole file blocks only, of file bytes merged across pieces: a block shared with used space is still read.
  spans.sort((a, b) => a[0] - b[0])
  const out = new ExtentMap()
  for (let i = 0; i < spans.length; ) {
    let [lo, hi] = spans[i++]
    while (i < spans.length && spans[i][0] <= hi) hi = Math.max(hi, spans[i++][1])
    const b0 = Math.ceil(lo / FILE_BLOCK)
    const b1 = Math.floor(hi / FILE_BLOCK)
    if (b1 > b0) out.set(b0, b1 - b0, BlockClass.InodeTable)
  }
  out.trim()
  return out
}

/** Volume bytes [offset, offset + length) as the disk holds them now. */
async function volumeRead(disk: Reader, volume: Volume, offset: number, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length)
  for (const q of volumeToDisk(volume, offset, length)) (await disk.read(q.diskOffset, q.length)).copy(out, q.volumeOffset - offset)
  return out
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(n)
  return b
}
