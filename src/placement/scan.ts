// Background introspection of one attached image, and the live map that
// follows the guest's writes. The scan runs through the image's own router
// (RouterFile), so it sees redirected writes; a guest writing meta-data while
// it runs makes it scan again (at most MAX_SCAN_TRIES times). Placement sees
// file blocks only: what a write means for the map is the map's to say.

import { BlockClass, isFastData, isFastTier, isMetadata } from '../introspect/classes'
import type { DiskFile } from '../introspect/container/disk'
import { TooCostlyError } from '../introspect/budget'
import { IntrospectError, IntrospectIOError } from '../introspect/errors'
import { formatSize } from '../size'
import { inspectImage, type Inspection } from '../introspect/inspect'
import { ImageMap } from '../introspect/map/image-map'
import { FileReader } from '../introspect/reader'
import { log, warnRepeated } from '../log'
import { BLOCK } from '../store/ram'
import type { SsdStore } from '../store/ssd'
import type { ImageEntry } from './image'

/** Scans retried when the guest wrote meta-data while they ran. */
const MAX_SCAN_TRIES = 3
/** Blocks written during a scan remembered for the retry decision (past this: retry). */
const MAX_SCAN_WRITES = 1 << 16
/** What the scans read and the preloads take instead of reading it again: at most this many bytes (512 MiB) for all scans running at once. */
const SCAN_KEEP_MAX = 512 << 20

export interface ScanContext {
  storeRoot: string
  smallFileBytes: number
  bootFiles: boolean
  ssd: SsdStore
  closed: () => boolean
  /** Bytes of the daemon's introspection memory ceiling (--introspect-memory) this image may take (default: no ceiling). */
  memoryLeft?: () => number
  /** Scans running now, this one included: they share SCAN_KEEP_MAX. */
  scansRunning?: () => number
}

/** Scans an image (again while the guest races it), installs the map, and returns whether it is done (then the warm start may run). */
export async function scanImage(entry: ImageEntry, ctx: ScanContext): Promise<boolean> {
  if (ctx.closed() || entry.unlinked) return false
  const t0 = Date.now()
  entry.scan.state = 'running'
  const progress = entry.progress.scan
  progress.startedMs = t0
  // Bytes of each volume walked, summed over the volumes: blocks done of blocks known so far.
  const walked = new Map<string, [number, number]>()
  const onProgress = (what: string, done: number, total: number) => {
    walked.set(what, [done, total])
    let d = 0
    let t = 0
    for (const [x, y] of walked.values()) (d += x), (t += y)
    progress.done = Math.floor(d / BLOCK)
    progress.total = Math.ceil(t / BLOCK)
  }
  for (;;) {
    walked.clear()
    entry.scan.tries++
    entry.scanWrites = new Set()
    let ins: Inspection
    let fileMap: ImageMap
    // What the scan reads is kept for the preload (it is most of the meta-data); writes drop their copies.
    entry.keeper.keep(Math.floor(SCAN_KEEP_MAX / Math.max(1, ctx.scansRunning?.() ?? 1)))
    try {
      const openFile = async (p: string): Promise<DiskFile> => (p === entry.abs ? new RouterFile(entry, ctx.closed) : FileReader.open(p))
      const memoryLeft = ctx.memoryLeft?.() ?? Infinity
      ins = await inspectImage(entry.abs, { storeRoot: ctx.storeRoot, openFile, restore: entry.restore ?? undefined, onProgress, smallFileBytes: ctx.smallFileBytes, bootFiles: ctx.bootFiles, memoryLeft })
      fileMap = ImageMap.fromInspection(ins, entry.abs, { warn: (m) => warnRepeated(`image ${entry.rel}`, repeatKind(m), `image ${entry.rel}: ${m}`) })
      const mapBytes = fileMap.memoryBytes() + ins.disk.mapBytes()
      if (mapBytes > memoryLeft) {
        await fileMap.close().catch(() => undefined)
        throw new TooCostlyError(`its map takes ${formatSize(mapBytes)}, more than the ${formatSize(Math.max(0, memoryLeft))} the introspection memory ceiling (--introspect-memory) leaves`, { file: entry.abs })
      }
    } catch (e) {
      entry.scanWrites = null
      entry.keeper.drop()
      entry.scan.state = 'failed'
      entry.scan.ms = Date.now() - t0
      progress.endedMs = Date.now()
      entry.scan.error = (e as Error).message
      await entry.map.close().catch(() => undefined)
      entry.map = ImageMap.empty()
      const why = e instanceof IntrospectError ? e.message : `unexpected error: ${(e as Error).stack ?? e}`
      log.warn(`image ${entry.rel}: not introspected, every block handled as data: ${why}`)
      return false
    }
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
    await entry.map.close().catch(() => undefined)
    entry.map = fileMap
    entry.scan.state = 'done'
    progress.endedMs = Date.now()
    progress.done = progress.total
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
    if (!ctx.ssd.failed) ctx.ssd.saveMap(entry.id, fileMap.serialize())
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
  if (len <= 0) return false
  const first = Math.floor(pos / BLOCK)
  const last = Math.floor((pos + len - 1) / BLOCK)
  if (entry.scanWrites) for (let b = first; b <= last && entry.scanWrites.size < MAX_SCAN_WRITES; b++) entry.scanWrites.add(b)
  const map = entry.map
  if (!map.scanned) return false
  if (map.needsLearning(first, last)) {
    const bytes = Buffer.from(buf.subarray(0, len))
    const run = entry.updating.then(async () => {
      for (const c of await map.applyWrite(pos, bytes)) entry.router.reclassified(c.start, c.count, c.from, c.to)
    })
    entry.updating = run.catch(() => undefined)
    await run.catch((e) => warnRepeated(`image ${entry.rel}`, 'live map update failed', `image ${entry.rel}: live map update at byte ${pos} failed: ${(e as Error).message}`))
    return false
  }
  // New data: a write of file data only (small and boot files' data is routed by its class anyway).
  if (!mayHold) return false
  for (let b = first; b <= last; b++) if (isFastData(map.classOf(b))) return false
  try {
    return await map.unallocated(pos, len)
  } catch (e) {
    log.debug(`image ${entry.rel}: free-space check at byte ${pos} failed: ${(e as Error).message}`)
    return false
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

/** The kind of an image map warning, for rate-limiting: its text before the reason, numbers left out. */
export function repeatKind(msg: string): string {
  return msg.split(' (')[0].replace(/\d+/g, 'N')
}
