// Background introspection of one attached image, and the live map that
// follows the guest's writes. The scan runs through the image's own router
// (RouterFile), so it sees redirected writes; a guest writing meta-data while
// it runs makes it scan again (at most MAX_SCAN_TRIES times). Placement sees
// file blocks only: what a write means for the map is the map's to say.

import { BlockClass, isFastData, isFastTier, isMetadata, placementRank } from '../introspect/classes'
import type { DiskFile } from '../introspect/container/disk'
import { IntrospectError, IntrospectIOError } from '../introspect/errors'
import { inspectImage, type Inspection } from '../introspect/inspect'
import { ExtentMap } from '../introspect/map/extent-map'
import { FileReader } from '../introspect/reader'
import { log } from '../log'
import { BLOCK } from '../store/ram'
import type { SsdStore } from '../store/ssd'
import type { ImageEntry } from './image'

/** Scans retried when the guest wrote meta-data while they ran. */
const MAX_SCAN_TRIES = 3
/** Blocks written during a scan remembered for the retry decision (past this: retry). */
export const MAX_SCAN_WRITES = 1 << 16
/** What the scan read and the preload takes instead of reading it again: at most this many bytes (512 MiB). */
const SCAN_KEEP_MAX = 512 << 20

export interface ScanContext {
  storeRoot: string
  smallFileBytes: number
  bootFiles: boolean
  ssd: SsdStore
  closed: () => boolean
}

/** Scans an image (again while the guest races it), installs the map, and returns whether it is done (then the warm start may run). */
export async function scanImage(entry: ImageEntry, ctx: ScanContext): Promise<boolean> {
  if (ctx.closed() || entry.unlinked) return false
  const t0 = Date.now()
  entry.scan.state = 'running'
  for (;;) {
    entry.scan.tries++
    entry.scanWrites = new Set()
    let ins: Inspection
    // What the scan reads is kept for the preload (it is most of the meta-data); writes drop their copies.
    entry.keeper.keep(SCAN_KEEP_MAX)
    try {
      const openFile = async (p: string): Promise<DiskFile> => (p === entry.abs ? new RouterFile(entry, ctx.closed) : FileReader.open(p))
      ins = await inspectImage(entry.abs, { storeRoot: ctx.storeRoot, openFile, restore: entry.restore ?? undefined, smallFileBytes: ctx.smallFileBytes, bootFiles: ctx.bootFiles })
    } catch (e) {
      entry.scanWrites = null
      entry.keeper.drop()
      entry.scan.state = 'failed'
      entry.scan.ms = Date.now() - t0
      entry.scan.error = (e as Error).message
      entry.map = new ExtentMap()
      const why = e instanceof IntrospectError ? e.message : `unexpected error: ${(e as Error).stack ?? e}`
      log.warn(`image ${entry.rel}: not introspected, every block handled as data: ${why}`)
      return false
    }
    const fileMap = ins.fileMaps?.find((m) => m.path === entry.abs)?.map ?? new ExtentMap()
    const writes = entry.scanWrites
    entry.scanWrites = null
    entry.restore = null // a retry scans
    const raced = writes.size >= MAX_SCAN_WRITES || [...writes].some((b) => isMetadata(fileMap.classOf(b)) || isMetadata(entry.map.classOf(b)))
    if (raced && entry.scan.tries < MAX_SCAN_TRIES && !ctx.closed()) {
      await ins.close().catch(() => undefined)
      log.info(`image ${entry.rel}: the guest wrote meta-data during the scan: scanning again`)
      continue
    }
    // Blocks that stopped being meta-data since the saved map lose their clean copies.
    for (const [s, c, cls] of entry.map.runs()) {
      for (let b = s; b < s + c; b++) if (!isFastTier(fileMap.classOf(b))) entry.router.reclassified(b, 1, cls, BlockClass.Data)
    }
    await entry.ins?.close().catch(() => undefined)
    entry.map = fileMap
    entry.ins = ins
    entry.scan.state = 'done'
    entry.scan.restored = ins.restored.length > 0 && ins.restored.length === ins.filesystems.length
    entry.restore = null
    entry.scan.ms = Date.now() - t0
    entry.scan.format = `${ins.report.format}/${ins.report.subformat}`
    entry.scan.mapBytes = fileMap.memoryBytes()
    if (raced) log.warn(`image ${entry.rel}: the guest kept writing meta-data during ${MAX_SCAN_TRIES} scans: the map may miss some of it until those blocks are written again`)
    let meta = 0
    let small = 0
    let boot = 0
    for (const [cls, n] of fileMap.countByClass()) {
      if (isMetadata(cls)) meta += n
      else if (cls === BlockClass.SmallFile) small += n
      else if (cls === BlockClass.BootFile) boot += n
    }
    log.info(
      `image ${entry.rel}: ${entry.scan.restored ? 'restored from its clean-unmount record (no inode walk)' : 'scanned'} in ${entry.scan.ms} ms (${entry.scan.format}, ${ins.report.partitions.length} volume(s), ` +
        `${ins.filesystems.map((f) => f.fs.info.type).join('+') || 'no ext file system'}): ${meta} meta-data block(s)${small ? `, ${small} block(s) of small files' data` : ''}${boot ? `, ${boot} block(s) of boot files' data (${ins.filesystems.reduce((a, f) => a + f.fs.bootFileInodes.length, 0)} file(s))` : ''} of ${Math.ceil(entry.state.size / BLOCK)}`,
    )
    if (!ctx.ssd.failed) ctx.ssd.saveMap(entry.id, fileMap.serialize(BLOCK))
    return true
  }
}

/**
 * A guest write's meaning for the map, before it is routed: blocks written
 * during a scan are remembered for its race check; a write that touches
 * meta-data feeds the live map first (it diffs against the current bytes).
 * Returns whether the write is new data the store may hold back (`absorb`).
 */
export async function beforeWrite(entry: ImageEntry, buf: Buffer, len: number, pos: number, mayHold: boolean): Promise<boolean> {
  const first = Math.floor(pos / BLOCK)
  const last = Math.floor((pos + len - 1) / BLOCK)
  if (entry.scanWrites) for (let b = first; b <= last && entry.scanWrites.size < MAX_SCAN_WRITES; b++) entry.scanWrites.add(b)
  let touchesMeta = false
  if (entry.ins && len > 0) {
    for (let b = first; b <= last && !touchesMeta; b++) touchesMeta = isMetadata(entry.map.classOf(b))
    if (touchesMeta) {
      const bytes = Buffer.from(buf.subarray(0, len))
      const run = entry.updating.then(() => learn(entry, pos, bytes))
      entry.updating = run.catch(() => undefined)
      await run.catch((e) => log.warn(`image ${entry.rel}: live map update at byte ${pos} failed: ${(e as Error).message}`))
    }
  }
  // New data: a write of file data only (small and boot files' data is routed by its class anyway).
  let fileData = !touchesMeta && entry.ins !== null && len > 0
  for (let b = first; b <= last && fileData; b++) fileData = !isFastData(entry.map.classOf(b))
  return fileData && mayHold && (await newAllocation(entry, pos, len))
}

/**
 * Whether every byte of image bytes [pos, pos+len) lies in a scanned file
 * system, in blocks its on-disk bitmaps show free: data the guest has just
 * allocated (its bitmaps reach their home blocks only at a checkpoint). A
 * bitmap that cannot be read answers no: the write goes to the HDD.
 */
async function newAllocation(entry: ImageEntry, pos: number, len: number): Promise<boolean> {
  const ins = entry.ins
  if (!ins) return false
  let covered = 0
  try {
    for (const p of fsPieces(ins, pos, len, false)) {
      const bs = p.efs.info.blockSize
      const f0 = Math.floor(p.vlo / bs)
      if (!(await p.efs.unallocated(f0, Math.ceil(p.vhi / bs) - f0))) return false
      covered += p.vhi - p.vlo
    }
  } catch (e) {
    log.debug(`image ${entry.rel}: free-space check at byte ${pos} failed: ${(e as Error).message}`)
    return false
  }
  return covered === len
}

/** The map changes a write implies: container tables, then each ext file system it touches. */
async function learn(entry: ImageEntry, pos: number, bytes: Buffer): Promise<void> {
  const ins = entry.ins
  if (!ins) return
  const touched = new Set<number>()
  const fileBlocksOfGuest = (g: number, n: number) => {
    for (let at = g; at < g + n; ) {
      const m = ins.disk.mapGuest(at)
      const k = Math.min(m.length, g + n - at)
      if (m.kind === 'data' && m.file === 0) {
        for (let b = Math.floor(m.fileOffset / BLOCK); b <= Math.floor((m.fileOffset + k - 1) / BLOCK); b++) touched.add(b)
      }
      at += Math.max(1, k)
    }
  }
  try {
    for (const r of await ins.disk.applyWrite(0, pos, bytes)) fileBlocksOfGuest(r.offset, r.length)
  } catch (e) {
    log.warn(`image ${entry.rel}: container table write at byte ${pos} not understood (${(e as Error).message}): map left as it was`)
  }
  // The file systems this write covers: whole fs blocks of the write's bytes over the current ones
  // (read before the write lands), or the write itself when it covers whole fs blocks.
  for (const p of fsPieces(ins, pos, bytes.length, false)) {
    const { volume, efs } = p
    const bs = efs.info.blockSize
    const fb0 = Math.floor(p.vlo / bs)
    const fb1 = Math.ceil(p.vhi / bs)
    const from = p.at - pos
    const to = from + (p.vhi - p.vlo)
    let whole: Buffer
    if (p.vlo === fb0 * bs && p.vhi === fb1 * bs) whole = bytes.subarray(from, to)
    else {
      whole = Buffer.from(await volumeRead(ins, volume, fb0 * bs, (fb1 - fb0) * bs))
      bytes.copy(whole, p.vlo - fb0 * bs, from, to)
    }
    for (const ch of await efs.update(fb0, whole)) {
      for (const s2 of volume.segments) {
        const clo = Math.max(ch.fsBlock * bs, s2.volumeOffset)
        const chi = Math.min((ch.fsBlock + ch.count) * bs, s2.volumeOffset + s2.length)
        if (chi > clo) fileBlocksOfGuest(s2.diskOffset + (clo - s2.volumeOffset), chi - clo)
      }
    }
  }
  for (const b of touched) {
    const from = entry.map.classOf(b)
    const to = fileBlockClass(ins, b)
    if (from === to) continue
    entry.map.set(b, 1, to)
    entry.router.reclassified(b, 1, from, to)
  }
}

/** Whole file blocks of inode-table space no inode uses yet: nothing to read, the preload skips them. */
export function unusedInodeTableBlocks(ins: Inspection | null): ExtentMap {
  const unused = new ExtentMap()
  if (!ins) return unused
  for (const { volume, fs: efs } of ins.filesystems) {
    const bs = efs.info.blockSize
    for (const [s, c] of efs.unusedInodeTableRuns()) {
      for (const seg of volume.segments) {
        const lo = Math.max(s * bs, seg.volumeOffset)
        const hi = Math.min((s + c) * bs, seg.volumeOffset + seg.length)
        for (let g = seg.diskOffset + (lo - seg.volumeOffset); g < seg.diskOffset + (hi - seg.volumeOffset); ) {
          const m = ins.disk.mapGuest(g)
          const n = Math.min(m.length, seg.diskOffset + (hi - seg.volumeOffset) - g)
          // Whole file blocks only: a block shared with used space is still read.
          if (m.kind === 'data' && m.file === 0) {
            const b0 = Math.ceil(m.fileOffset / BLOCK)
            const b1 = Math.floor((m.fileOffset + n) / BLOCK)
            if (b1 > b0) unused.set(b0, b1 - b0, BlockClass.InodeTable)
          }
          g += Math.max(1, n)
        }
      }
    }
  }
  return unused
}

/** The clean-unmount record: JSON {mtimeNs, size, volumes}, then each volume's ExtFs state (u32 length + bytes). */
export function packClean(mtimeNs: bigint, size: number, ins: Inspection): Buffer {
  const states = ins.filesystems.map((f) => ({ volume: f.volume.index, state: f.fs.exportState() }))
  const head = Buffer.from(JSON.stringify({ mtimeNs: String(mtimeNs), size, volumes: states.map((x) => x.volume) }))
  const parts: Buffer[] = [u32(head.length), head]
  for (const x of states) parts.push(u32(x.state.length), x.state)
  return Buffer.concat(parts)
}

export function unpackClean(b: Buffer): { mtimeNs: bigint; size: number; states: Map<number, Buffer> } | null {
  try {
    const n = b.readUInt32LE(0)
    const head = JSON.parse(b.subarray(4, 4 + n).toString()) as { mtimeNs: string; size: number; volumes: number[] }
    const states = new Map<number, Buffer>()
    let at = 4 + n
    for (const v of head.volumes) {
      const len = b.readUInt32LE(at)
      states.set(v, b.subarray(at + 4, at + 4 + len))
      at += 4 + len
    }
    return { mtimeNs: BigInt(head.mtimeNs), size: head.size, states }
  } catch {
    return null
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(n)
  return b
}

async function volumeRead(ins: Inspection, volume: Inspection['layout']['volumes'][number], offset: number, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length)
  for (const s of volume.segments) {
    const lo = Math.max(offset, s.volumeOffset)
    const hi = Math.min(offset + length, s.volumeOffset + s.length)
    if (hi > lo) (await ins.disk.read(s.diskOffset + (lo - s.volumeOffset), hi - lo)).copy(out, lo - offset)
  }
  return out
}

/** The class of 4 KiB block b of the image file: the highest-priority meta-data class of any byte in it, else small-file data if any byte is, else data. */
export function fileBlockClass(ins: Inspection, b: number): BlockClass {
  let best = BlockClass.Data
  const better = (c: BlockClass) => {
    if (placementRank(c) > placementRank(best)) best = c
  }
  const end = (b + 1) * BLOCK
  for (let at = b * BLOCK; at < end; ) {
    const loc = ins.disk.locate(0, at)
    const n = Math.max(1, Math.min(loc.length, end - at))
    if (loc.kind === 'container') better(BlockClass.Container)
    else if (loc.kind === 'guest' || loc.kind === 'compressed') {
      const g = loc.guestOffset
      for (const r of ins.layout.regions) if (r.offset < g + n && g < r.offset + r.length) better(BlockClass.PartitionTable)
    }
    at += n
  }
  for (const p of fsPieces(ins, b * BLOCK, BLOCK, true)) {
    const bs = p.efs.info.blockSize
    const f0 = Math.floor(p.vlo / bs)
    for (const [, , cls] of p.efs.map.runsIn(f0, Math.ceil(p.vhi / bs) - f0)) better(cls)
  }
  return best
}

/** A piece of image bytes that one scanned file system holds: where it starts in the image file, and its byte range in the volume. */
interface FsPiece {
  volume: Inspection['layout']['volumes'][number]
  efs: Inspection['filesystems'][number]['fs']
  /** Image file offset of the piece's first byte. */
  at: number
  vlo: number
  vhi: number
}

/** The pieces of image bytes [pos, pos+len) that scanned file systems hold (compressed grains too when `compressed`). */
function* fsPieces(ins: Inspection, pos: number, len: number, compressed: boolean): Generator<FsPiece> {
  for (let at = pos; at < pos + len; ) {
    const loc = ins.disk.locate(0, at)
    const n = Math.max(1, Math.min(loc.length, pos + len - at))
    if (loc.kind === 'guest' || (compressed && loc.kind === 'compressed')) {
      for (const { volume, fs: efs } of ins.filesystems) {
        for (const seg of volume.segments) {
          const lo = Math.max(loc.guestOffset, seg.diskOffset)
          const hi = Math.min(loc.guestOffset + n, seg.diskOffset + seg.length)
          if (hi <= lo) continue
          yield { volume, efs, at: at + (lo - loc.guestOffset), vlo: seg.volumeOffset + (lo - seg.diskOffset), vhi: seg.volumeOffset + (hi - seg.diskOffset) }
        }
      }
    }
    at += n
  }
}

/** A DiskFile over the image's router: parsers see the current bytes, redirected writes included. */
class RouterFile implements DiskFile {
  bytesRead = 0
  readonly name: string
  constructor(
    private readonly entry: ImageEntry,
    private readonly stopped: () => boolean,
  ) {
    this.name = entry.abs
  }
  get size(): number {
    return this.entry.state.size
  }
  async read(offset: number, length: number): Promise<Buffer> {
    if (this.stopped()) throw new IntrospectIOError('the mount is shutting down', { file: this.name, offset })
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new IntrospectIOError(`read of ${length} bytes at ${offset} is outside 0..${this.size}`, { file: this.name, offset })
    }
    const buf = Buffer.alloc(length)
    const n = await this.entry.keeper.read(buf, length, offset)
    if (n !== length) throw new IntrospectIOError(`short read: wanted ${length} bytes, got ${n}`, { file: this.name, offset })
    this.bytesRead += length
    return buf
  }
  async refresh(): Promise<number> {
    return this.size
  }
  async dataRanges(start: number, end: number): Promise<[number, number][]> {
    return [[start, end]]
  }
  async close(): Promise<void> {
    /* the fd is the datapath's */
  }
}
