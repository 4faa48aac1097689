// LVM2 physical volumes read from bytes (no device-mapper here, and none
// needed): the label in one of the first four sectors, the PV header, the
// metadata area's header and its newest text metadata, parsed by a small
// bounded parser of our own (never eval). Linear logical volumes become
// volumes; other segment types are reported, not guessed.

import zlib from 'zlib'
import { CorruptError, NotThisFormatError } from '../errors'
import type { Reader } from '../reader'

const SECTOR = 512
const LABEL_ID = 'LABELONE'
const LABEL_TYPE = 'LVM2 001'
const MDA_MAGIC = ' LVM2 x[5A%r0N*>'
/** Largest metadata text we parse (lvm2's own default area is 1 MiB). */
export const MAX_METADATA = 1 << 20
const MAX_DEPTH = 16
const MAX_LIST = 1 << 16

export type LvmValue = string | number | LvmValue[] | LvmSection
export interface LvmSection {
  [key: string]: LvmValue
}

/** The LVM2 text metadata format: `key = value`, `name { ... }`, lists `[a, b]`, strings, integers, # comments. */
export function parseLvmText(text: string, where: { file: string; offset: number }): LvmSection {
  let i = 0
  const fail = (msg: string): never => {
    throw new CorruptError(`metadata text: ${msg} at character ${i}`, { file: where.file, layer: 'lvm', structure: 'metadata', offset: where.offset })
  }
  const skip = () => {
    for (;;) {
      while (i < text.length && /\s/.test(text[i])) i++
      if (text[i] === '#') {
        while (i < text.length && text[i] !== '\n') i++
      } else return
    }
  }
  const ident = (): string => {
    const m = /^[A-Za-z0-9_.+\-]+/.exec(text.slice(i, i + 256))
    if (!m) return fail('expected a name')
    i += m[0].length
    return m[0]
  }
  const value = (depth: number): LvmValue => {
    skip()
    const c = text[i]
    if (c === '"') {
      let s = ''
      i++
      while (i < text.length && text[i] !== '"') {
        if (text[i] === '\\') i++
        s += text[i++]
      }
      if (text[i] !== '"') fail('unterminated string')
      i++
      return s
    }
    if (c === '[') {
      if (depth > MAX_DEPTH) fail('lists nest too deep')
      i++
      const list: LvmValue[] = []
      for (;;) {
        skip()
        if (text[i] === ']') {
          i++
          return list
        }
        if (list.length >= MAX_LIST) fail('list too long')
        list.push(value(depth + 1))
        skip()
        if (text[i] === ',') i++
        else if (text[i] !== ']') fail('expected , or ]')
      }
    }
    const m = /^-?\d+(\.\d+)?/.exec(text.slice(i, i + 32))
    if (!m) return fail('expected a value')
    i += m[0].length
    return Number(m[0])
  }
  const section = (depth: number, closing: boolean): LvmSection => {
    if (depth > MAX_DEPTH) fail('sections nest too deep')
    const out: LvmSection = Object.create(null)
    for (;;) {
      skip()
      if (i >= text.length) {
        if (closing) fail('missing }')
        return out
      }
      if (text[i] === '}') {
        if (!closing) fail('unexpected }')
        i++
        return out
      }
      const key = ident()
      skip()
      if (text[i] === '{') {
        i++
        out[key] = section(depth + 1, true)
      } else if (text[i] === '=') {
        i++
        out[key] = value(depth)
      } else fail(`expected = or { after ${key}`)
    }
  }
  return section(0, false)
}

export interface LvmSegment {
  /** Byte offset within the LV and length. */
  volumeOffset: number
  length: number
  /** Byte offset within the PV. */
  pvOffset: number
}

export interface LvmLv {
  name: string
  vg: string
  id: string
  segments: LvmSegment[]
}

export interface LvmPv {
  uuid: string
  vg: string | null
  /** Byte ranges of the PV that are LVM meta-data: label sector, metadata area(s). */
  regions: { offset: number; length: number; structure: string }[]
  lvs: LvmLv[]
  warnings: string[]
}

function formatUuid(raw: string): string {
  // lvm2 prints ids as 6-4-4-4-4-4-6.
  const parts = [6, 4, 4, 4, 4, 4, 6]
  let o = 0
  return parts.map((n) => raw.slice(o, (o += n))).join('-')
}

export async function readLvmPv(pv: Reader): Promise<LvmPv> {
  const ctx = { file: pv.name, layer: 'lvm' }
  if (pv.size < 4 * SECTOR) throw new NotThisFormatError('too small for an LVM label', ctx)
  const head = await pv.read(0, 4 * SECTOR)
  let labelAt = -1
  for (let s = 0; s < 4; s++) {
    if (head.toString('latin1', s * SECTOR, s * SECTOR + 8) === LABEL_ID && head.toString('latin1', s * SECTOR + 24, s * SECTOR + 32) === LABEL_TYPE) {
      labelAt = s * SECTOR
      break
    }
  }
  if (labelAt < 0) throw new NotThisFormatError('no LVM2 label in the first four sectors', ctx)
  const label = head.subarray(labelAt, labelAt + SECTOR)
  const lctx = { ...ctx, structure: 'label', offset: labelAt }
  const crc = lvmCrc(label.subarray(20))
  if (crc !== label.readUInt32LE(16)) throw new CorruptError(`label checksum expected 0x${label.readUInt32LE(16).toString(16)}, computed 0x${crc.toString(16)}`, lctx)
  const hdrOff = label.readUInt32LE(20)
  if (hdrOff < 32 || hdrOff + 40 > SECTOR) throw new CorruptError(`PV header offset ${hdrOff} is outside the label sector`, lctx)
  const uuid = formatUuid(label.toString('latin1', hdrOff, hdrOff + 32))
  // disk_locn lists: data areas, then metadata areas, each ended by a zero entry.
  let o = hdrOff + 40
  const lists: { offset: number; size: number }[][] = [[], []]
  for (const list of lists) {
    for (;;) {
      if (o + 16 > SECTOR) throw new CorruptError('PV header area lists run past the label sector', lctx)
      const off = Number(label.readBigUInt64LE(o))
      const size = Number(label.readBigUInt64LE(o + 8))
      o += 16
      if (off === 0) break
      list.push({ offset: off, size })
    }
  }
  const regions: LvmPv['regions'] = [{ offset: labelAt, length: SECTOR, structure: 'LVM label' }]
  const warnings: string[] = []
  let meta: LvmSection | null = null
  let best = -1
  for (const mda of lists[1]) {
    const mctx = { ...ctx, structure: 'metadata area header', offset: mda.offset }
    if (mda.offset + SECTOR > pv.size || mda.size < SECTOR || mda.offset + mda.size > pv.size) {
      throw new CorruptError(`metadata area ${mda.offset}+${mda.size} is outside the PV`, mctx)
    }
    regions.push({ offset: mda.offset, length: mda.size, structure: 'LVM metadata area' })
    const h = await pv.read(mda.offset, SECTOR)
    if (h.toString('latin1', 4, 20) !== MDA_MAGIC) throw new CorruptError('metadata area header has no LVM2 magic', mctx)
    // raw_locn[0]: the current metadata text (offset relative to the area; it may wrap past its end).
    const tOff = Number(h.readBigUInt64LE(40))
    const tSize = Number(h.readBigUInt64LE(48))
    if (tOff === 0 || tSize === 0) continue
    if (tSize > MAX_METADATA || tSize > mda.size - SECTOR || tOff < SECTOR || tOff >= mda.size) {
      throw new CorruptError(`metadata text ${tOff}+${tSize} does not fit the ${mda.size}-byte area (limit ${MAX_METADATA})`, mctx)
    }
    const first = Math.min(tSize, mda.size - tOff)
    const parts = [await pv.read(mda.offset + tOff, first)]
    if (first < tSize) parts.push(await pv.read(mda.offset + SECTOR, tSize - first))
    const text = Buffer.concat(parts).toString('latin1').replace(/\0+$/, '')
    const parsed = parseLvmText(text, { file: pv.name, offset: mda.offset + tOff })
    const vgName = Object.keys(parsed).find((k) => typeof parsed[k] === 'object' && !Array.isArray(parsed[k]))
    const seq = vgName ? Number((parsed[vgName] as LvmSection).seqno ?? 0) : 0
    if (vgName && seq > best) {
      best = seq
      meta = parsed
    }
  }
  if (!meta) return { uuid, vg: null, regions, lvs: [], warnings }
  const vgName = Object.keys(meta).find((k) => typeof meta![k] === 'object' && !Array.isArray(meta![k])) as string
  const vg = meta[vgName] as LvmSection
  const extent = Number(vg.extent_size) * SECTOR
  const pvs = (vg.physical_volumes ?? {}) as LvmSection
  const pvName = Object.keys(pvs).find((k) => (pvs[k] as LvmSection).id === uuid)
  if (!pvName || !Number.isSafeInteger(extent) || extent <= 0) {
    warnings.push(`volume group ${vgName}: this PV (${uuid}) or its extent size is not in the metadata`)
    return { uuid, vg: vgName, regions, lvs: [], warnings }
  }
  const peStart = Number((pvs[pvName] as LvmSection).pe_start) * SECTOR
  const lvs: LvmLv[] = []
  for (const [lvName, lvVal] of Object.entries((vg.logical_volumes ?? {}) as LvmSection)) {
    const lv = lvVal as LvmSection
    const segs: LvmSegment[] = []
    let problem: string | null = null
    for (const [k, sv] of Object.entries(lv)) {
      if (!/^segment\d+$/.test(k)) continue
      const seg = sv as LvmSection
      const stripes = seg.stripes as LvmValue[] | undefined
      if (seg.type !== 'striped' || Number(seg.stripe_count) !== 1 || !Array.isArray(stripes) || stripes.length !== 2) {
        problem = `segment type "${String(seg.type)}"${seg.stripe_count !== undefined ? ` with ${seg.stripe_count} stripes` : ''}`
        break
      }
      if (stripes[0] !== pvName) {
        problem = `a segment on another physical volume (${String(stripes[0])})`
        break
      }
      const pvOffset = peStart + Number(stripes[1]) * extent
      const length = Number(seg.extent_count) * extent
      if (!Number.isSafeInteger(pvOffset) || !Number.isSafeInteger(length) || pvOffset + length > pv.size) {
        throw new CorruptError(`LV ${vgName}/${lvName} ${k} ends past the PV`, { ...ctx, structure: 'metadata', object: `${vgName}/${lvName}` })
      }
      segs.push({ volumeOffset: Number(seg.start_extent) * extent, length, pvOffset })
    }
    if (problem) {
      warnings.push(`LV ${vgName}/${lvName} has ${problem}: only linear LVs are mapped; it is served as plain data`)
      continue
    }
    segs.sort((a, b) => a.volumeOffset - b.volumeOffset)
    lvs.push({ name: lvName, vg: vgName, id: String(lv.id ?? ''), segments: segs })
  }
  return { uuid, vg: vgName, regions, lvs, warnings }
}

/** lvm2's checksum: CRC-32 with initial value 0xf597a6cf and no final inversion (lib/misc/crc.c). */
export function lvmCrc(buf: Buffer): number {
  // zlib.crc32(buf, init) computes ~crc32 starting from ~init; lvm's variant skips both inversions.
  return (~zlib.crc32(buf, ~0xf597a6cf >>> 0) >>> 0) >>> 0
}
