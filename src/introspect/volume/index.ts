// Volumes of a virtual disk (DESIGN.md, pipeline step 2): GPT, MBR with
// logical partitions, LVM2 linear LVs inside PVs (on the whole disk or in a
// partition), or one bare file system. Output: byte ranges of the disk with a
// type and what they hold, and the disk ranges that are partition-table or
// LVM meta-data.

import { IntrospectError, NotThisFormatError } from '../errors'
import { SliceReader, type Reader } from '../reader'
import { contentOf, detectContent, type VolumeContent } from './content'
import { readGpt } from './gpt'
import { readLvmPv } from './lvm'
import { readMbr } from './mbr'

export type { VolumeContent } from './content'
export { detectContent } from './content'

export type VolumeScheme = 'mbr' | 'gpt' | 'lvm' | 'none'

export interface Volume {
  /** MBR: 1-4 primary, 5+ logical; GPT: entry slot (1-based); LVM: 1-based in metadata order after the partitions' numbers; none: 1. */
  index: number
  scheme: VolumeScheme
  /** Byte offset on the disk (an LV: of its first segment) and size in bytes. */
  start: number
  size: number
  /** MBR '0x83'; GPT type GUID; LVM 'lvm-linear'; none 'disk'. */
  type: string
  /** GPT partition name, LVM 'vg/lv', else ''. */
  name: string
  content: VolumeContent
  /** Where the volume's bytes are on the disk, in volume order. */
  segments: { volumeOffset: number; diskOffset: number; length: number }[]
  /** For an LV: index of the volume holding its PV (absent when the PV is the whole disk). */
  parent?: number
  /** GPT unique partition GUID, LVM LV id. */
  uuid?: string
}

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

/** A Reader over a volume's bytes: a slice, or the concatenation of an LV's segments. */
export function volumeReader(disk: Reader, v: Volume): Reader {
  if (v.segments.length === 1 && v.segments[0].volumeOffset === 0) {
    return new SliceReader(disk, v.segments[0].diskOffset, v.size, `${disk.name}#${v.index}`)
  }
  return new SegmentReader(disk, v)
}

class SegmentReader implements Reader {
  readonly size: number
  readonly name: string
  constructor(private readonly disk: Reader, private readonly v: Volume) {
    this.size = v.size
    this.name = `${disk.name}#${v.name || v.index}`
  }
  async read(offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new NotThisFormatError(`read ${offset}+${length} outside the volume's ${this.size} bytes`, { file: this.name })
    }
    const out = Buffer.alloc(length)
    let pos = 0
    while (pos < length) {
      const at = offset + pos
      const seg = this.v.segments.find((s) => at >= s.volumeOffset && at < s.volumeOffset + s.length)
      if (!seg) throw new NotThisFormatError(`volume byte ${at} is in no segment`, { file: this.name })
      const n = Math.min(length - pos, seg.volumeOffset + seg.length - at)
      ;(await this.disk.read(seg.diskOffset + (at - seg.volumeOffset), n)).copy(out, pos)
      pos += n
    }
    return out
  }
}

async function contentAt(disk: Reader, start: number, size: number): Promise<VolumeContent> {
  return detectContent(new SliceReader(disk, start, size))
}

const hex = (t: number) => `0x${t.toString(16).padStart(2, '0')}`

export async function readVolumes(disk: Reader): Promise<VolumeLayout> {
  const layout: VolumeLayout = { scheme: 'none', volumes: [], regions: [], warnings: [] }
  let mbr = null
  try {
    mbr = await readMbr(disk)
  } catch (e) {
    if (!(e instanceof NotThisFormatError)) throw e
  }
  if (!mbr || mbr.protective) {
    try {
      const gpt = await readGpt(disk)
      layout.scheme = 'gpt'
      layout.regions.push(...gpt.regions)
      layout.warnings.push(...gpt.warnings)
      for (const e of gpt.entries) {
        layout.volumes.push({
          index: e.index,
          scheme: 'gpt',
          start: e.start,
          size: e.size,
          type: e.typeGuid,
          name: e.name,
          content: await contentAt(disk, e.start, e.size),
          segments: [{ volumeOffset: 0, diskOffset: e.start, length: e.size }],
          uuid: e.uniqueGuid,
        })
      }
    } catch (e) {
      if (!(e instanceof NotThisFormatError) || mbr) throw e
    }
  }
  if (layout.scheme === 'none' && mbr) {
    layout.scheme = 'mbr'
    for (const s of mbr.sectors) layout.regions.push({ offset: s.offset, length: 512, structure: s.structure })
    for (const e of mbr.entries) {
      const isExt = [0x05, 0x0f, 0x85].includes(e.type) && !e.logical
      layout.volumes.push({
        index: e.index,
        scheme: 'mbr',
        start: e.start,
        size: e.size,
        type: hex(e.type),
        name: '',
        content: isExt ? 'extended' : await contentAt(disk, e.start, e.size),
        segments: [{ volumeOffset: 0, diskOffset: e.start, length: e.size }],
      })
    }
  }
  if (layout.scheme === 'none') {
    const content = await detectContent(disk)
    layout.volumes.push({
      index: 1,
      scheme: 'none',
      start: 0,
      size: disk.size,
      type: 'disk',
      name: '',
      content,
      segments: [{ volumeOffset: 0, diskOffset: 0, length: disk.size }],
    })
  }
  // LVM PVs: in partitions, or the whole disk.
  let next = Math.max(0, ...layout.volumes.map((v) => v.index)) + 1
  for (const holder of [...layout.volumes]) {
    if (holder.content !== 'lvm-pv') continue
    try {
      const pv = await readLvmPv(new SliceReader(disk, holder.start, holder.size, `${disk.name}#${holder.index}`))
      for (const r of pv.regions) layout.regions.push({ offset: holder.start + r.offset, length: r.length, structure: r.structure })
      layout.warnings.push(...pv.warnings)
      for (const lv of pv.lvs) {
        const segments = lv.segments.map((s) => ({ volumeOffset: s.volumeOffset, diskOffset: holder.start + s.pvOffset, length: s.length }))
        const size = segments.reduce((a, s) => Math.max(a, s.volumeOffset + s.length), 0)
        const v: Volume = {
          index: next++,
          scheme: 'lvm',
          start: segments[0]?.diskOffset ?? holder.start,
          size,
          type: 'lvm-linear',
          name: `${lv.vg}/${lv.name}`,
          content: 'unknown',
          segments,
          uuid: lv.id,
          ...(holder.scheme === 'none' ? {} : { parent: holder.index }),
        }
        if (segments.length && segments[0].volumeOffset === 0) {
          const head = await volumeReader(disk, v).read(0, Math.min(size, 8192))
          v.content = contentOf(head)
        }
        layout.volumes.push(v)
      }
    } catch (e) {
      if (!(e instanceof IntrospectError)) throw e
      layout.warnings.push(`LVM PV in volume ${holder.index}: ${e.message}`)
    }
  }
  layout.regions.sort((a, b) => a.offset - b.offset)
  return layout
}
