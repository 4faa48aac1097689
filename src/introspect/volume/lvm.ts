// LVM2 physical volumes read from bytes (no device-mapper here, and none
// needed; layouts from lvm2's lib/format_text/layout.h and lib/label/label.h):
// the label in one of the first four sectors, the PV header behind it, each
// metadata area's mda_header and the text metadata its raw_locn points at,
// parsed by a small bounded parser of our own (never eval). Volume groups are
// assembled over every PV found on the disk, so an LV may span PVs in
// several partitions. Linear LVs become volumes; other segment types are
// reported in warnings, not guessed.

import zlib from 'zlib'
import { CorruptError, NotThisFormatError, toSafeNumber, type ErrorContext } from '../errors'
import type { Reader } from '../reader'

const SECTOR = 512
const LABEL_ID = 'LABELONE'
const LABEL_TYPE = 'LVM2 001'
/** Sectors searched for the label. */
const LABEL_SCAN_SECTORS = 4
const PV_HEADER_FIXED = 40 // pv_uuid[32] + device_size_xl
const MDA_MAGIC = ' LVM2 x[5A%r0N*>'
const MDA_HEADER_SIZE = 512
const RAW_LOCN_IGNORED = 0x1
/** lvm2's CRC seed (lib/misc/crc.h INITIAL_CRC). */
const INITIAL_CRC = 0xf597a6cf
/** Largest metadata text we parse (lvm2's default metadata area is 1 MiB). */
export const MAX_METADATA = 1 << 20
const MAX_DEPTH = 16
const MAX_LIST = 1 << 16
/** Most data/metadata area entries in a PV header (lvm2 writes one or two of each). */
const MAX_AREAS = 8

/** lvm2's checksum (lib/misc/crc.c): CRC-32 from `seed`, without the final inversion; chain calls for split buffers. */
export function lvmCrc(buf: Buffer, seed = INITIAL_CRC): number {
  // zlib.crc32(buf, v) inverts v on entry and the result on exit; lvm2 does neither.
  return ~zlib.crc32(buf, ~seed >>> 0) >>> 0
}

// ---- the text format ---------------------------------------------------

export type LvmValue = string | number | LvmValue[] | LvmSection
export interface LvmSection {
  [key: string]: LvmValue
}

/** The LVM2 text metadata format: `key = value`, `name { ... }`, lists `[a, b]`, strings, numbers, # comments. */
export function parseLvmText(text: string, where: { file: string; offset: number }): LvmSection {
  if (text.length > MAX_METADATA) {
    throw new CorruptError(`metadata text: expected at most ${MAX_METADATA} bytes, saw ${text.length}`, { file: where.file, layer: 'lvm', structure: 'metadata text', offset: where.offset })
  }
  let i = 0
  const fail = (msg: string): never => {
    throw new CorruptError(`metadata text: ${msg} at character ${i}`, { file: where.file, layer: 'lvm', structure: 'metadata text', offset: where.offset })
  }
  const skip = () => {
    for (;;) {
      while (i < text.length && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n' || text[i] === '\r')) i++
      if (text[i] !== '#') return
      while (i < text.length && text[i] !== '\n') i++
    }
  }
  const NAME = /[A-Za-z0-9_.+\-]+/y
  const NUMBER = /-?\d+(\.\d+)?/y
  const ident = (): string => {
    NAME.lastIndex = i
    const m = NAME.exec(text)
    if (!m) return fail('expected a name')
    i += m[0].length
    return m[0]
  }
  const value = (depth: number): LvmValue => {
    skip()
    const c = text[i]
    if (c === '"') {
      const parts: string[] = []
      let from = ++i
      while (i < text.length && text[i] !== '"') {
        if (text[i] === '\\') {
          parts.push(text.slice(from, i))
          from = ++i // the escaped character is kept as it is
        }
        i++
      }
      if (i >= text.length) fail('unterminated string')
      parts.push(text.slice(from, i++))
      return parts.join('')
    }
    if (c === '[') {
      if (depth >= MAX_DEPTH) fail('lists nest too deep')
      i++
      const list: LvmValue[] = []
      for (;;) {
        skip()
        if (text[i] === ']') {
          i++
          return list
        }
        if (list.length >= MAX_LIST) fail(`expected at most ${MAX_LIST} list items`)
        list.push(value(depth + 1))
        skip()
        if (text[i] === ',') i++
        else if (text[i] !== ']') fail('expected , or ]')
      }
    }
    NUMBER.lastIndex = i
    const m = NUMBER.exec(text)
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
        if (closing) fail('expected }, saw the end')
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

// ---- the on-disk PV ------------------------------------------------------

export interface LvmMetadata {
  vgName: string
  vgId: string
  seqno: number
  vg: LvmSection
  /** PV byte offset of the text (for error messages). */
  offset: number
}

export interface LvmPv {
  /** The PV's id as lvm prints it (6-4-4-4-4-4-6). */
  uuid: string
  /** Bytes of the PV (the slice it was read from). */
  size: number
  /** PV byte ranges that are LVM meta-data: label sector, metadata area(s). */
  regions: { offset: number; length: number; structure: string }[]
  /** The newest metadata among this PV's areas (none for a PV without metadata areas). */
  metadata: LvmMetadata | null
  warnings: string[]
}

/** lvm2 prints ids as 6-4-4-4-4-4-6 characters. */
export function formatLvmId(raw: string): string {
  let o = 0
  return [6, 4, 4, 4, 4, 4, 6].map((n) => raw.slice(o, (o += n))).join('-')
}

/** The label, PV header, metadata areas and newest text metadata of the PV that `pv` exposes. */
export async function readLvmPv(pv: Reader): Promise<LvmPv> {
  const ctx: ErrorContext = { file: pv.name, layer: 'lvm', structure: 'label', offset: 0 }
  if (pv.size < LABEL_SCAN_SECTORS * SECTOR) throw new NotThisFormatError(`expected at least ${LABEL_SCAN_SECTORS} sectors, saw ${pv.size} bytes`, ctx)
  const head = await pv.read(0, LABEL_SCAN_SECTORS * SECTOR)
  let labelAt = -1
  for (let s = 0; s < LABEL_SCAN_SECTORS && labelAt < 0; s++) {
    if (head.toString('latin1', s * SECTOR, s * SECTOR + 8) === LABEL_ID) labelAt = s * SECTOR
  }
  if (labelAt < 0) throw new NotThisFormatError(`expected "${LABEL_ID}" in one of the first ${LABEL_SCAN_SECTORS} sectors, saw none`, ctx)
  const lctx: ErrorContext = { ...ctx, offset: labelAt }
  const label = head.subarray(labelAt, labelAt + SECTOR)
  // label_header
  const sector_xl = label.readBigUInt64LE(0x08)
  const crc_xl = label.readUInt32LE(0x10)
  const offset_xl = label.readUInt32LE(0x14)
  const type = label.toString('latin1', 0x18, 0x20)
  if (type !== LABEL_TYPE) throw new NotThisFormatError(`expected label type "${LABEL_TYPE}", saw ${JSON.stringify(type)}`, lctx)
  if (sector_xl !== BigInt(labelAt / SECTOR)) throw new CorruptError(`expected sector_xl ${labelAt / SECTOR}, saw ${sector_xl}`, lctx)
  if (offset_xl < 0x20 || offset_xl + PV_HEADER_FIXED + 32 > SECTOR) throw new CorruptError(`expected the PV header offset in 32..${SECTOR - PV_HEADER_FIXED - 32}, saw ${offset_xl}`, lctx)
  verifyLabelCrc(label, crc_xl, lctx)

  // pv_header: pv_uuid, device_size_xl, then two lists of disk_locn {offset, size}, each ended by a zero offset.
  const hctx: ErrorContext = { ...ctx, structure: 'PV header', offset: labelAt + offset_xl }
  const uuid = formatLvmId(label.toString('latin1', offset_xl, offset_xl + 32))
  let o = offset_xl + PV_HEADER_FIXED
  const areas: { offset: number; size: number }[][] = [[], []] // data areas, metadata areas
  for (const list of areas) {
    for (;;) {
      if (o + 16 > SECTOR) throw new CorruptError('expected the area lists to end within the label sector', hctx)
      const offset = toSafeNumber(label.readBigUInt64LE(o), 'disk_locn offset', hctx)
      const size = toSafeNumber(label.readBigUInt64LE(o + 8), 'disk_locn size', hctx)
      o += 16
      if (offset === 0) break
      if (list.length >= MAX_AREAS) throw new CorruptError(`expected at most ${MAX_AREAS} areas in a list`, hctx)
      list.push({ offset, size })
    }
  }
  const regions: LvmPv['regions'] = [{ offset: labelAt, length: SECTOR, structure: 'LVM label' }]
  const warnings: string[] = []
  let metadata: LvmMetadata | null = null
  const errors: CorruptError[] = []
  for (const mda of areas[1]) {
    const mctx: ErrorContext = { file: pv.name, layer: 'lvm', structure: 'mda_header', offset: mda.offset }
    if (mda.size < 2 * MDA_HEADER_SIZE || mda.offset + mda.size > pv.size) {
      throw new CorruptError(`expected the metadata area ${mda.offset}+${mda.size} within the PV's ${pv.size} bytes`, mctx)
    }
    regions.push({ offset: mda.offset, length: mda.size, structure: 'LVM metadata area' })
    try {
      const m = await readMetadataArea(pv, mda, mctx)
      if (m && (!metadata || m.seqno > metadata.seqno)) metadata = m
    } catch (e) {
      if (!(e instanceof CorruptError)) throw e
      errors.push(e)
    }
  }
  // A damaged area is survivable while another copy of the metadata is good.
  if (!metadata && errors.length) throw errors[0]
  for (const e of errors) warnings.push(`${e.message} (another metadata area is used)`)
  return { uuid, size: pv.size, regions, metadata, warnings }
}

/** crc_xl covers the label sector from offset_xl's field (byte 20) to its end. */
function verifyLabelCrc(label: Buffer, stored: number, ctx: ErrorContext): void {
  const crc = lvmCrc(label.subarray(0x14, SECTOR))
  if (crc !== stored) throw new CorruptError(`expected label checksum 0x${crc.toString(16)}, saw 0x${stored.toString(16)}`, ctx)
}

async function readMetadataArea(pv: Reader, mda: { offset: number; size: number }, ctx: ErrorContext): Promise<LvmMetadata | null> {
  const h = await pv.read(mda.offset, MDA_HEADER_SIZE)
  // mda_header
  const checksum_xl = h.readUInt32LE(0x00)
  const magic = h.toString('latin1', 0x04, 0x14)
  const version = h.readUInt32LE(0x14)
  const start = h.readBigUInt64LE(0x18)
  const size = h.readBigUInt64LE(0x20)
  if (magic !== MDA_MAGIC) throw new CorruptError(`expected magic ${JSON.stringify(MDA_MAGIC)}, saw ${JSON.stringify(magic)}`, ctx)
  if (version !== 1) throw new CorruptError(`expected version 1, saw ${version}`, ctx)
  if (start !== BigInt(mda.offset) || size !== BigInt(mda.size)) {
    throw new CorruptError(`expected start ${mda.offset} and size ${mda.size} (from the PV header), saw ${start} and ${size}`, ctx)
  }
  const crc = lvmCrc(h.subarray(0x04, MDA_HEADER_SIZE))
  if (crc !== checksum_xl) throw new CorruptError(`expected checksum 0x${crc.toString(16)}, saw 0x${checksum_xl.toString(16)}`, ctx)
  // raw_locn[0]: the committed metadata text; its offset is relative to the
  // area, and the text may wrap from the area's end to just past the header.
  const rctx: ErrorContext = { ...ctx, structure: 'raw_locn', offset: mda.offset + 0x28 }
  const tOff = toSafeNumber(h.readBigUInt64LE(0x28), 'raw_locn offset', rctx)
  const tSize = toSafeNumber(h.readBigUInt64LE(0x30), 'raw_locn size', rctx)
  const tCrc = h.readUInt32LE(0x38)
  const flags = h.readUInt32LE(0x3c)
  if (tOff === 0 || tSize === 0 || flags & RAW_LOCN_IGNORED) return null
  const ring = mda.size - MDA_HEADER_SIZE
  if (tSize > MAX_METADATA || tSize > ring || tOff < MDA_HEADER_SIZE || tOff >= mda.size) {
    throw new CorruptError(`expected text ${tOff}+${tSize} within the ${mda.size}-byte area and at most ${MAX_METADATA} bytes`, rctx)
  }
  const first = Math.min(tSize, mda.size - tOff)
  const parts = [await pv.read(mda.offset + tOff, first)]
  if (first < tSize) parts.push(await pv.read(mda.offset + MDA_HEADER_SIZE, tSize - first))
  const textCrc = parts.reduce((c, p) => lvmCrc(p, c), INITIAL_CRC)
  if (textCrc !== tCrc) throw new CorruptError(`expected metadata text checksum 0x${textCrc.toString(16)}, saw 0x${tCrc.toString(16)}`, rctx)
  const text = Buffer.concat(parts).toString('latin1').replace(/\0+$/, '')
  const at = mda.offset + tOff
  const parsed = parseLvmText(text, { file: pv.name, offset: at })
  // The one top-level section is the VG; the rest are plain keys (contents, version, description, ...).
  const vgs = Object.keys(parsed).filter((k) => isSection(parsed[k]))
  if (vgs.length !== 1) throw new CorruptError(`metadata text: expected one volume group section, saw ${vgs.length}`, { ...ctx, structure: 'metadata text', offset: at })
  const vg = parsed[vgs[0]] as LvmSection
  const seqno = vg.seqno
  if (typeof seqno !== 'number' || !Number.isSafeInteger(seqno)) throw new CorruptError(`metadata text: expected a seqno in VG ${vgs[0]}`, { ...ctx, structure: 'metadata text', offset: at })
  return { vgName: vgs[0], vgId: typeof vg.id === 'string' ? vg.id : vgs[0], seqno, vg, offset: at }
}

function isSection(v: LvmValue | undefined): v is LvmSection {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

// ---- volume groups over the PVs found -----------------------------------

/** A PV found on the disk: where it starts on the disk, and what it says. */
export interface FoundPv {
  diskOffset: number
  pv: LvmPv
  /** Index of the volume holding it (undefined: the whole disk). */
  holder?: number
}

export interface LvmLv {
  vg: string
  name: string
  id: string
  /** Disk byte ranges in LV order. */
  segments: { volumeOffset: number; diskOffset: number; length: number }[]
  /** The PV holding the first segment. */
  first: FoundPv
}

/**
 * The linear LVs of every VG whose newest metadata is on one of `found`.
 * LVs with another segment type (striped over more than one stripe, mirror,
 * raid, thin, cache, snapshot, ...), hidden sub-LVs, or extents on a PV not
 * on this disk are left out with a warning naming them: the bytes stay plain
 * data of their PV, which costs caching precision, never correctness. Damaged
 * numbers in an LV are a CorruptError for that LV, also reported as a warning
 * (the other LVs stay usable).
 */
export function linearVolumes(found: FoundPv[], file: string): { lvs: LvmLv[]; warnings: string[] } {
  const warnings: string[] = []
  const byUuid = new Map<string, FoundPv>()
  for (const f of found) {
    if (byUuid.has(f.pv.uuid)) warnings.push(`LVM PV ${f.pv.uuid} appears twice on the disk (at bytes ${byUuid.get(f.pv.uuid)!.diskOffset} and ${f.diskOffset}); the first is used`)
    else byUuid.set(f.pv.uuid, f)
  }
  // Newest metadata per VG id.
  const vgs = new Map<string, LvmMetadata>()
  for (const f of found) {
    const m = f.pv.metadata
    if (m && (!vgs.has(m.vgId) || m.seqno > vgs.get(m.vgId)!.seqno)) vgs.set(m.vgId, m)
  }
  const lvs: LvmLv[] = []
  for (const m of vgs.values()) {
    const ctx: ErrorContext = { file, layer: 'lvm', structure: 'metadata text', object: m.vgName }
    const extentSectors = m.vg.extent_size
    if (typeof extentSectors !== 'number' || !Number.isSafeInteger(extentSectors) || extentSectors <= 0) {
      warnings.push(new CorruptError(`expected a positive extent_size, saw ${JSON.stringify(extentSectors)}`, ctx).message)
      continue
    }
    const extent = extentSectors * SECTOR
    // pvN name in this VG → the PV on the disk and its first extent's PV byte offset.
    const pvs = new Map<string, { f: FoundPv; peStart: number; peCount: number } | string>()
    const pvSection = isSection(m.vg.physical_volumes) ? m.vg.physical_volumes : {}
    for (const [name, v] of Object.entries(pvSection)) {
      if (!isSection(v)) continue
      const f = typeof v.id === 'string' ? byUuid.get(v.id) : undefined
      if (!f) {
        pvs.set(name, String(v.id))
        continue
      }
      const peStart = v.pe_start
      const peCount = v.pe_count
      if (typeof peStart !== 'number' || typeof peCount !== 'number' || !Number.isSafeInteger(peStart * SECTOR + peCount * extent) || peStart < 0 || peCount < 0) {
        warnings.push(new CorruptError(`PV ${name}: expected pe_start and pe_count, saw ${JSON.stringify(peStart)} and ${JSON.stringify(peCount)}`, ctx).message)
        continue
      }
      pvs.set(name, { f, peStart: peStart * SECTOR, peCount })
    }
    const lvSection = isSection(m.vg.logical_volumes) ? m.vg.logical_volumes : {}
    for (const [lvName, v] of Object.entries(lvSection)) {
      if (!isSection(v)) continue
      const full = `${m.vgName}/${lvName}`
      try {
        const lv = mapLv(full, v, pvs, extent, { ...ctx, object: full })
        if (typeof lv === 'string') warnings.push(`LV ${full} ${lv}: only linear LVs are mapped; its bytes are served as data of the PV`)
        else lvs.push({ vg: m.vgName, name: lvName, id: typeof v.id === 'string' ? v.id : '', ...lv })
      } catch (e) {
        if (!(e instanceof CorruptError)) throw e
        warnings.push(e.message)
      }
    }
  }
  return { lvs, warnings }
}

/** The LV's disk segments, or why it is not mapped. */
function mapLv(
  full: string,
  lv: LvmSection,
  pvs: Map<string, { f: FoundPv; peStart: number; peCount: number } | string>,
  extent: number,
  ctx: ErrorContext,
): { segments: LvmLv['segments']; first: FoundPv } | string {
  const status = Array.isArray(lv.status) ? lv.status : []
  if (!status.includes('VISIBLE')) return 'is hidden (a part of another LV)'
  const raw: { startExtent: number; extentCount: number; pv: { f: FoundPv; peStart: number; peCount: number }; pe: number }[] = []
  for (const [k, s] of Object.entries(lv)) {
    if (!/^segment\d+$/.test(k) || !isSection(s)) continue
    const stripes = s.stripes
    if (s.type !== 'striped' || s.stripe_count !== 1 || !Array.isArray(stripes) || stripes.length !== 2) {
      return `has segment type "${String(s.type)}"${s.type === 'striped' ? ` with ${String(s.stripe_count)} stripes` : ''}`
    }
    const [pvName, pe] = stripes
    const startExtent = s.start_extent
    const extentCount = s.extent_count
    const ints = [startExtent, extentCount, pe].every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)
    if (!ints || (extentCount as number) === 0) {
      throw new CorruptError(`${k}: expected whole numbers for start_extent, extent_count (> 0) and the stripe's first extent, saw ${JSON.stringify([startExtent, extentCount, pe])}`, ctx)
    }
    const where = pvs.get(String(pvName))
    if (where === undefined) throw new CorruptError(`${k}: expected a PV of the VG, saw ${JSON.stringify(pvName)}`, ctx)
    if (typeof where === 'string') return `has extents on PV ${where}, which is not on this disk`
    if ((pe as number) + (extentCount as number) > where.peCount || where.peStart + ((pe as number) + (extentCount as number)) * extent > where.f.pv.size) {
      throw new CorruptError(`${k}: expected extents ${pe}+${extentCount} within ${String(pvName)}'s ${where.peCount} extents and ${where.f.pv.size} bytes`, ctx)
    }
    raw.push({ startExtent: startExtent as number, extentCount: extentCount as number, pv: where, pe: pe as number })
  }
  if (raw.length === 0) throw new CorruptError('expected at least one segment, saw none', ctx)
  raw.sort((a, b) => a.startExtent - b.startExtent)
  let next = 0
  for (const s of raw) {
    if (s.startExtent !== next) throw new CorruptError(`expected a segment starting at extent ${next}, saw one at ${s.startExtent}`, ctx)
    next += s.extentCount
  }
  if (!Number.isSafeInteger(next * extent)) throw new CorruptError(`expected a size below 2^53 bytes, saw ${next} extents`, ctx)
  return {
    segments: raw.map((s) => ({
      volumeOffset: s.startExtent * extent,
      diskOffset: s.pv.f.diskOffset + s.pv.peStart + s.pe * extent,
      length: s.extentCount * extent,
    })),
    first: raw[0].pv.f,
  }
}
