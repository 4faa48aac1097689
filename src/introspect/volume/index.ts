// Volumes of a virtual disk (DESIGN.md, pipeline step 2): GPT, MBR with
// logical partitions, LVM2 linear LVs inside PVs (on the whole disk or in
// partitions, a VG possibly over several), or one bare file system. Output:
// byte ranges of the disk with a type and what they hold, and the disk ranges
// that are partition-table or LVM meta-data.
//
// Errors: a damaged partition table (GPT with both copies bad, an EBR loop, a
// partition past the end) is a CorruptError for the whole disk. Damage inside
// a PV (label, metadata area, an LV's numbers) and LVs we do not map
// (non-linear segment types) become `warnings` instead: the PV keeps its own
// volume and its bytes are served as plain data, so the partitions beside it
// stay usable.

import { CorruptError, IntrospectIOError, NotThisFormatError } from '../errors'
import { SliceReader, type Reader } from '../reader'
import { detectContent, type VolumeContent } from './content'
import { readGpt } from './gpt'
import { linearVolumes, readLvmPv, type FoundPv } from './lvm'
import { EXTENDED_TYPES, readMbr } from './mbr'

export type { VolumeContent } from './content'
export { detectContent } from './content'

export type VolumeScheme = 'mbr' | 'gpt' | 'lvm' | 'none'

export interface Volume {
  /**
   * MBR: 1-4 primary, 5+ logical (Linux numbering); GPT: entry number
   * (1-based); none: 1. LVM: the LVs in metadata order, numbered on from the
   * highest partition index so that every index in a layout is unique.
   */
  index: number
  /** Which table defined it ('none' = bare file system / whole disk). */
  scheme: VolumeScheme
  /** Byte offset on the disk (an LV: of its first segment). */
  start: number
  /** Bytes. */
  size: number
  /** MBR '0x83' style; GPT type GUID lower-case; LVM 'lvm-linear'; none 'disk'. */
  type: string
  /** GPT partition name, LVM 'vg/lv', else ''. */
  name: string
  content: VolumeContent
  /** Where the volume's bytes live on the disk, in volume order (one entry unless an LV has several linear segments). */
  segments: { volumeOffset: number; diskOffset: number; length: number }[]
  /** For an LV: index of the volume holding the PV of its first segment (undefined if that PV is the whole disk). */
  parent?: number
  /** GPT unique partition GUID, LVM LV id. */
  uuid?: string
}

/** Bytes of the disk that are partition-table / LVM meta-data. */
export interface VolumeRegion {
  offset: number
  length: number
  structure: string
}

export interface VolumeLayout {
  scheme: VolumeScheme
  volumes: Volume[]
  regions: VolumeRegion[]
  warnings: string[]
}

/**
 * A stretch of a volume's bytes and where it lies on the disk. The one place
 * the segment arithmetic is written: everything that goes from volume bytes to
 * disk bytes or back (the volume reader, the fold, the image map, --at) asks
 * volumeToDisk or diskToVolume.
 */
export interface VolumePiece {
  volumeOffset: number
  diskOffset: number
  length: number
}

type Segments = Pick<Volume, 'segments'>

/** Volume bytes [offset, offset + length) on the disk: one piece per segment they cross, in volume order. */
export function* volumeToDisk(v: Segments, offset: number, length: number): Generator<VolumePiece> {
  for (const s of v.segments) {
    const lo = Math.max(offset, s.volumeOffset)
    const hi = Math.min(offset + length, s.volumeOffset + s.length)
    if (hi > lo) yield { volumeOffset: lo, diskOffset: s.diskOffset + (lo - s.volumeOffset), length: hi - lo }
  }
}

/** The part of disk bytes [offset, offset + length) that volume `v` holds: one piece per segment, in volume order. */
export function* diskToVolume(v: Segments, offset: number, length: number): Generator<VolumePiece> {
  for (const s of v.segments) {
    const lo = Math.max(offset, s.diskOffset)
    const hi = Math.min(offset + length, s.diskOffset + s.length)
    if (hi > lo) yield { volumeOffset: s.volumeOffset + (lo - s.diskOffset), diskOffset: lo, length: hi - lo }
  }
}

/** A Reader over a volume's bytes: a slice, or the concatenation of an LV's segments. */
export function volumeReader(disk: Reader, v: Volume): Reader {
  const name = `${disk.name}#${v.name || v.index}`
  if (v.segments.length === 1 && v.segments[0].volumeOffset === 0 && v.segments[0].length === v.size) {
    return new SliceReader(disk, v.segments[0].diskOffset, v.size, name)
  }
  return new SegmentReader(disk, v.segments, v.size, name)
}

/** Segments in volume order, contiguous from 0 (readVolumes makes them so). */
class SegmentReader implements Reader {
  constructor(
    private readonly disk: Reader,
    private readonly segments: Volume['segments'],
    readonly size: number,
    readonly name: string,
  ) {}

  async read(offset: number, length: number): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new IntrospectIOError(`read of ${length} bytes at ${offset} is outside 0..${this.size}`, { file: this.name, offset })
    }
    const out = Buffer.alloc(length)
    let pos = offset
    for (const p of volumeToDisk({ segments: this.segments }, offset, length)) {
      if (p.volumeOffset !== pos) break
      ;(await this.disk.read(p.diskOffset, p.length)).copy(out, p.volumeOffset - offset)
      pos += p.length
    }
    if (pos < offset + length) throw new IntrospectIOError(`volume byte ${pos} is in no segment`, { file: this.name, offset: pos })
    return out
  }
}

const hexType = (t: number) => `0x${t.toString(16).padStart(2, '0')}`

/** `f()`, or null when it says the disk is not its format. */
async function probe<T>(f: () => Promise<T>): Promise<T | null> {
  try {
    return await f()
  } catch (e) {
    if (e instanceof NotThisFormatError) return null
    throw e
  }
}

export async function readVolumes(disk: Reader): Promise<VolumeLayout> {
  const layout: VolumeLayout = { scheme: 'none', volumes: [], regions: [], warnings: [] }
  const part = (index: number, scheme: VolumeScheme, start: number, size: number, type: string, name: string, content: VolumeContent, uuid?: string): Volume => ({
    index,
    scheme,
    start,
    size,
    type,
    name,
    content,
    segments: [{ volumeOffset: 0, diskOffset: start, length: size }],
    ...(uuid !== undefined ? { uuid } : {}),
  })
  const contentAt = (start: number, size: number) => detectContent(new SliceReader(disk, start, size))

  // GPT first: it is only taken behind a protective MBR, which readMbr refuses.
  const gpt = await probe(() => readGpt(disk))
  if (gpt) {
    layout.scheme = 'gpt'
    layout.regions.push(...gpt.regions)
    layout.warnings.push(...gpt.warnings)
    for (const e of gpt.entries) layout.volumes.push(part(e.index, 'gpt', e.start, e.size, e.typeGuid, e.name, await contentAt(e.start, e.size), e.uniqueGuid))
  } else {
    const mbr = await probe(() => readMbr(disk))
    if (mbr) {
      layout.scheme = 'mbr'
      for (const s of mbr.sectors) layout.regions.push({ offset: s.offset, length: 512, structure: s.structure })
      for (const e of mbr.entries) {
        const content = !e.logical && EXTENDED_TYPES.has(e.type) ? 'extended' : await contentAt(e.start, e.size)
        layout.volumes.push(part(e.index, 'mbr', e.start, e.size, hexType(e.type), '', content))
      }
    } else {
      layout.volumes.push(part(1, 'none', 0, disk.size, 'disk', '', await detectContent(disk)))
    }
  }

  // LVM: every PV on the disk, then the VGs over them.
  const found: FoundPv[] = []
  for (const holder of layout.volumes) {
    if (holder.content !== 'lvm-pv') continue
    const where = holder.scheme === 'none' ? 'the whole disk' : `volume ${holder.index}`
    try {
      const pv = await readLvmPv(new SliceReader(disk, holder.start, holder.size, `${disk.name}#${holder.index}`))
      for (const r of pv.regions) layout.regions.push({ offset: holder.start + r.offset, length: r.length, structure: r.structure })
      for (const w of pv.warnings) layout.warnings.push(`LVM PV in ${where}: ${w}`)
      found.push({ diskOffset: holder.start, pv, ...(holder.scheme === 'none' ? {} : { holder: holder.index }) })
    } catch (e) {
      if (!(e instanceof CorruptError || e instanceof NotThisFormatError)) throw e
      layout.warnings.push(`LVM PV in ${where} not used: ${e.message}`)
    }
  }
  if (found.length) {
    const { lvs, warnings } = linearVolumes(found, disk.name)
    layout.warnings.push(...warnings)
    let next = Math.max(0, ...layout.volumes.map((v) => v.index)) + 1
    for (const lv of lvs) {
      const size = lv.segments.reduce((a, s) => a + s.length, 0)
      const v: Volume = {
        index: next++,
        scheme: 'lvm',
        start: lv.segments[0].diskOffset,
        size,
        type: 'lvm-linear',
        name: `${lv.vg}/${lv.name}`,
        content: 'unknown',
        segments: lv.segments,
        ...(lv.first.holder !== undefined ? { parent: lv.first.holder } : {}),
        ...(lv.id ? { uuid: lv.id } : {}),
      }
      v.content = await detectContent(volumeReader(disk, v))
      layout.volumes.push(v)
    }
    if (layout.scheme === 'none') layout.scheme = 'lvm'
  }
  layout.regions.sort((a, b) => a.offset - b.offset)
  return layout
}
