// The whole introspection pipeline for one image: container → volumes → file
// systems → one map per backing file. Pure (no FUSE, no caches): the CLI's
// `inspect` prints it; the datapath keeps an ImageMap made from it
// (map/image-map.ts: ImageMap.fromInspection(ins, imageFile)).

import fs from 'fs'
import { budgetFor, ScanBudget, TooCostlyError } from './budget'
import { BlockClass, className } from './classes'
import { openImage } from './container'
import type { OpenOptions } from './container/open'
import type { VirtualDisk } from './container/types'
import { IntrospectError } from './errors'
import { ExtFs, scanExt } from './fs/ext'
import { FileMapBuilder, type FileMap } from './map/fold'
import type { ClassifiedFs } from './map/image-map'
import { diskToVolume, readVolumes, volumeReader, volumeToDisk, type Volume, type VolumeLayout } from './volume'

export interface InspectOptions {
  /** Directory extent and parent files must stay inside (default: the image's directory). */
  storeRoot?: string
  /** Scan file systems (default true). Off: container and volumes only. */
  scan?: boolean
  /** Scan progress: bytes done and total of the file system being scanned. */
  onProgress?: (what: string, done: number, total: number) => void
  /** Saved states (ExtFs.exportState) by volume index: those file systems are restored, not scanned (a state that does not fit is scanned). */
  restore?: Map<number, Buffer>
  /** Opens the image's files (default: from disk); see OpenOptions.openFile. */
  openFile?: OpenOptions['openFile']
  /** Data of regular files up to this many bytes is classed small-file (ExtScanOptions.smallFileBytes; default 0: none). */
  smallFileBytes?: number
  /** Class the data of the guest's boot files (by name) boot-file (ExtScanOptions.bootFiles; default false). */
  bootFiles?: boolean
  /**
   * Bytes of the daemon's introspection memory ceiling this scan may still
   * take (default: no ceiling). The scan's objects are bounded by it as well
   * as by the image's files (budget.ts); past it: TooCostlyError.
   */
  memoryLeft?: number
  /** No scan budget (default false): for tools reading known-good images. */
  unbounded?: boolean
}

export interface FsReport {
  /** Index of the volume (Volume.index) the file system lives in. */
  volume: number
  type: string
  blockSize: number
  blocks: number
  features: string[]
  uuid: string
  label: string
  /** Blocks and bytes per class (data: every block no run claims). */
  classes: Record<string, { blocks: number; bytes: number }>
  scanMs: number
  bytesRead: number
  reads: number
  /** Bytes of RAM the fs-level map takes. */
  mapBytes: number
  skipped: { count: number; reasons: string[] }
}

export interface InspectReport {
  image: string
  format: string
  subformat: string
  virtualSize: number
  files: string[]
  parents: { path: string; format: string; subformat: string }[]
  allocatedBytes: number
  readOnly: string | null
  regions: { file: string; offset: number; length: number; structure: string }[]
  scheme: string
  partitions: {
    index: number
    scheme: string
    start: number
    size: number
    type: string
    name: string
    content: string
    uuid?: string
    parent?: number
  }[]
  warnings: string[]
  filesystems: FsReport[]
  /** Volumes whose file system could not be scanned: the reason (the image is still served, as data). */
  errors: { volume: number; message: string }[]
  /** Bytes of RAM the per-file maps take, and their runs (after fold). */
  fileMapBytes?: number
}

export interface Inspection {
  report: InspectReport
  disk: VirtualDisk
  layout: VolumeLayout
  filesystems: { volume: Volume; fs: ExtFs }[]
  /** One map per backing file, 4 KiB granularity (only when scanned). */
  fileMaps: FileMap[] | null
  /** Volumes whose file system was restored from a saved state instead of scanned. */
  restored: number[]
  /** What the scan read and visited against its limits. */
  budget: ScanBudget
  close(): Promise<void>
}

const EXT_CONTENT = new Set(['ext2', 'ext3', 'ext4'])

export async function inspectImage(image: string, opts: InspectOptions = {}): Promise<Inspection> {
  const disk = await openImage(image, { storeRoot: opts.storeRoot, openFile: opts.openFile })
  try {
    const layout = await readVolumes(disk)
    const filesystems: { volume: Volume; fs: ExtFs }[] = []
    const errors: { volume: number; message: string }[] = []
    const restored: number[] = []
    const budget = opts.unbounded ? ScanBudget.unlimited() : new ScanBudget(budgetFor(onDiskBytes(disk), opts.memoryLeft), { file: image })
    // Disk byte ranges of the volumes scanned so far: a volume overlapping one of them is not scanned
    // again (1,024 GPT entries naming one partition are one scan).
    const scannedRanges: { index: number; start: number; end: number }[] = []
    if (opts.scan !== false) {
      for (const v of layout.volumes) {
        if (!EXT_CONTENT.has(v.content)) continue
        const ranges = [...volumeToDisk(v, 0, v.size)].map((p) => ({ index: v.index, start: p.diskOffset, end: p.diskOffset + p.length }))
        const twin = scannedRanges.find((a) => ranges.some((r) => r.start < a.end && a.start < r.end))
        if (twin) {
          errors.push({ volume: v.index, message: `overlaps volume ${twin.index}, whose file system was scanned: not scanned again (served as data)` })
          continue
        }
        scannedRanges.push(...ranges)
        const what = `${v.content} in ${v.scheme === 'none' ? 'the whole disk' : `volume ${v.index}`}`
        try {
          const saved = opts.restore?.get(v.index)
          if (saved) {
            try {
              filesystems.push({ volume: v, fs: await ExtFs.restore(volumeReader(disk, v), saved, { smallFileBytes: opts.smallFileBytes, bootFiles: opts.bootFiles, budget }) })
              restored.push(v.index)
              continue
            } catch (e) {
              if (!(e instanceof IntrospectError) || e instanceof TooCostlyError) throw e
            }
          }
          const fs = await scanExt(volumeReader(disk, v), {
            smallFileBytes: opts.smallFileBytes,
            bootFiles: opts.bootFiles,
            budget,
            onProgress: opts.onProgress ? (d, t) => opts.onProgress?.(what, d, t) : undefined,
          })
          filesystems.push({ volume: v, fs })
        } catch (e) {
          // Past the budget the whole image is too costly (the budget is the image's, not the volume's).
          if (!(e instanceof IntrospectError) || e instanceof TooCostlyError) throw e
          errors.push({ volume: v.index, message: e.message })
        }
      }
    }
    const fileMaps = opts.scan !== false ? foldMaps(disk, layout, filesystems) : null
    const report = makeReport(image, disk, layout, filesystems, errors, fileMaps)
    return { report, disk, layout, filesystems, fileMaps, restored, budget, close: () => disk.close() }
  } catch (e) {
    await disk.close().catch(() => undefined)
    throw e
  }
}

/** Bytes the image's files (parents included) hold on disk (st_blocks): what its scan budget is relative to. */
function onDiskBytes(disk: VirtualDisk): number {
  let n = 0
  for (let d: VirtualDisk | null = disk; d; d = d.parent) {
    for (const p of d.files) {
      try {
        const st = fs.statSync(p)
        n += Math.min(st.size, st.blocks * 512)
      } catch {
        /* a file we cannot stat adds nothing */
      }
    }
  }
  return n
}

/** Guest offset of byte `offset` of volume `v` (LVs may have several segments). */
export function volumeToGuest(v: Volume, offset: number): number | null {
  for (const p of volumeToDisk(v, offset, 1)) return p.diskOffset
  return null
}

/** The fold: container regions, partition tables and every file system's class runs, in 4 KiB blocks of each file (map/fold.ts). */
function foldMaps(disk: VirtualDisk, layout: VolumeLayout, filesystems: { volume: Volume; fs: ClassifiedFs }[]): FileMap[] {
  const b = new FileMapBuilder(disk, (p) => {
    try {
      return fs.statSync(p).size
    } catch {
      return 0
    }
  })
  for (const r of layout.regions) b.addGuest(r.offset, r.length, BlockClass.PartitionTable)
  for (const { volume, fs: cfs } of filesystems) {
    const bs = cfs.blockSize
    // A run of fs blocks is contiguous in the volume; segments split it on the disk.
    for (const [start, count, cls] of cfs.runs()) for (const p of volumeToDisk(volume, start * bs, count * bs)) b.addGuest(p.diskOffset, p.length, cls)
  }
  return b.build()
}

function makeReport(
  image: string,
  disk: VirtualDisk,
  layout: VolumeLayout,
  filesystems: { volume: Volume; fs: ExtFs }[],
  errors: { volume: number; message: string }[],
  fileMaps: FileMap[] | null,
): InspectReport {
  const parents: InspectReport['parents'] = []
  for (let p = disk.parent; p; p = p.parent) parents.push({ path: p.files[0], format: p.format, subformat: p.subformat })
  const regions: InspectReport['regions'] = []
  for (let d: VirtualDisk | null = disk; d; d = d.parent) {
    for (const r of d.regions()) regions.push({ file: d.files[r.file], offset: r.offset, length: r.length, structure: r.structure })
  }
  return {
    image,
    format: disk.format,
    subformat: disk.subformat,
    virtualSize: disk.size,
    files: [...disk.files],
    parents,
    allocatedBytes: disk.allocatedBytes(),
    readOnly: disk.readOnlyReason,
    regions,
    scheme: layout.scheme,
    partitions: layout.volumes.map((v) => ({
      index: v.index,
      scheme: v.scheme,
      start: v.start,
      size: v.size,
      type: v.type,
      name: v.name,
      content: v.content,
      ...(v.uuid !== undefined ? { uuid: v.uuid } : {}),
      ...(v.parent !== undefined ? { parent: v.parent } : {}),
    })),
    warnings: layout.warnings,
    filesystems: filesystems.map(({ volume, fs: efs }) => fsReport(volume, efs)),
    errors,
    ...(fileMaps ? { fileMapBytes: fileMaps.reduce((a, m) => a + m.map.memoryBytes(), 0) } : {}),
  }
}

function fsReport(volume: Volume, efs: ExtFs): FsReport {
  const bs = efs.info.blockSize
  const classes: FsReport['classes'] = {}
  let meta = 0
  for (const [cls, blocks] of [...efs.map.countByClass()].sort((a, b) => a[0] - b[0])) {
    classes[className(cls)] = { blocks, bytes: blocks * bs }
    meta += blocks
  }
  const data = Math.max(0, efs.info.blocksCount - meta)
  classes[className(BlockClass.Data)] = { blocks: data, bytes: data * bs }
  return {
    volume: volume.index,
    type: efs.info.type,
    blockSize: bs,
    blocks: efs.info.blocksCount,
    features: efs.info.features,
    uuid: efs.info.uuid,
    label: efs.info.label,
    classes,
    scanMs: efs.stats.ms,
    bytesRead: efs.stats.bytesRead,
    reads: efs.stats.reads,
    mapBytes: efs.map.memoryBytes(),
    skipped: efs.stats.skipped,
  }
}

export interface AtReport {
  /** Byte of the image file asked about. */
  offset: number
  file: string
  /** What holds it: container meta-data, a guest byte, or nothing. */
  kind: 'container' | 'guest' | 'compressed' | 'unused'
  class: string
  structure?: string
  guestOffset?: number
  volume?: number
  fsBlock?: number
  inode?: number
  logical?: number
  path?: string
}

/** What lives at byte `offset` of the image file (files[0]): class, and for file-system blocks the inode and path. */
export async function whatIsAt(ins: Inspection, offset: number): Promise<AtReport> {
  const file = ins.disk.files[0]
  const loc = ins.disk.locate(0, offset)
  if (loc.kind === 'container') return { offset, file, kind: 'container', class: className(BlockClass.Container), structure: loc.structure }
  if (loc.kind === 'unused') return { offset, file, kind: 'unused', class: className(BlockClass.Free) }
  const g = loc.kind === 'guest' ? loc.guestOffset : loc.guestOffset
  const base: AtReport = { offset, file, kind: loc.kind, class: className(BlockClass.Data), guestOffset: g }
  if (loc.kind === 'compressed') return base
  const table = ins.layout.regions.find((r) => g >= r.offset && g < r.offset + r.length)
  if (table) return { ...base, class: className(BlockClass.PartitionTable), structure: table.structure }
  // The innermost volume holding g: an LV before the PV partition that holds it.
  // (An extended partition only contains logical ones: the smallest holder is the innermost.)
  const inVolumes = ins.layout.volumes.flatMap((v) => (v.content === 'extended' ? [] : [...diskToVolume(v, g, 1)].map((p) => ({ v, inVolume: p.volumeOffset }))))
  inVolumes.sort((a, b) => Number(b.v.parent !== undefined) - Number(a.v.parent !== undefined) || a.v.size - b.v.size)
  if (!inVolumes.length) return base
  const { v, inVolume } = inVolumes[0]
  const hit = ins.filesystems.find((f) => f.volume === v)
  if (!hit) return { ...base, volume: v.index }
  const fsBlock = Math.floor(inVolume / hit.fs.info.blockSize)
  const [obj] = await hit.fs.objectsAt(fsBlock, 1)
  return {
    ...base,
    volume: v.index,
    fsBlock,
    class: className(obj ? obj.class : hit.fs.classOf(fsBlock)),
    ...(obj?.inode !== undefined ? { inode: obj.inode } : {}),
    ...(obj?.logical !== undefined ? { logical: obj.logical } : {}),
    ...(obj?.path !== undefined ? { path: obj.path } : {}),
  }
}
