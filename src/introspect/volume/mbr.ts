// MBR partition tables: the four primary entries at 446 and chains of
// extended boot records (EBRs) for logical partitions. Our own parser: the
// npm `mbr` package reads one sector and leaves EBR chains, loop protection
// and bounds against the disk to the caller, which is the part that matters.

import { CorruptError, NotThisFormatError } from '../errors'
import type { Reader } from '../reader'

export const SECTOR = 512
const SIGNATURE = 0xaa55
const TABLE = 446
const ENTRY = 16
/** Most logical partitions we follow in one extended partition (Linux allows far fewer in practice). */
export const MAX_LOGICAL = 128
const EXTENDED = new Set([0x05, 0x0f, 0x85])

export interface MbrEntry {
  /** 1..4 primary, 5.. logical (Linux numbering). */
  index: number
  type: number
  bootable: boolean
  /** Byte offset and size on the disk. */
  start: number
  size: number
  logical: boolean
}

export interface MbrTable {
  /** Primary entries (incl. the extended container) and logical partitions, in index order. */
  entries: MbrEntry[]
  /** Disk byte ranges of the MBR and every EBR. */
  sectors: { offset: number; structure: string }[]
  /** Type 0xee in a primary slot: a protective MBR in front of a GPT. */
  protective: boolean
}

interface RawEntry {
  status: number
  type: number
  lbaStart: number
  sectors: number
}

function readEntry(sector: Buffer, i: number): RawEntry {
  const o = TABLE + i * ENTRY
  return {
    status: sector.readUInt8(o + 0x00),
    type: sector.readUInt8(o + 0x04),
    lbaStart: sector.readUInt32LE(o + 0x08),
    sectors: sector.readUInt32LE(o + 0x0c),
  }
}

export async function readMbr(disk: Reader): Promise<MbrTable> {
  if (disk.size < SECTOR) throw new NotThisFormatError(`disk of ${disk.size} bytes is smaller than one sector`, { file: disk.name, layer: 'mbr' })
  const mbr = await disk.read(0, SECTOR)
  if (mbr.readUInt16LE(510) !== SIGNATURE) {
    throw new NotThisFormatError(`expected boot signature 0xaa55, saw 0x${mbr.readUInt16LE(510).toString(16)}`, {
      file: disk.name,
      layer: 'mbr',
      structure: 'MBR',
      offset: 510,
    })
  }
  const raw = [0, 1, 2, 3].map((i) => readEntry(mbr, i))
  // A boot sector of a bare FAT/NTFS file system also ends in 0xaa55: a table
  // has status bytes 0x00/0x80 only and at least one entry in use.
  if (raw.some((e) => e.status !== 0 && e.status !== 0x80) || raw.every((e) => e.type === 0)) {
    throw new NotThisFormatError('sector 0 is a boot sector without a partition table', { file: disk.name, layer: 'mbr', structure: 'MBR', offset: TABLE })
  }
  const table: MbrTable = { entries: [], sectors: [{ offset: 0, structure: 'MBR' }], protective: raw.some((e) => e.type === 0xee) }
  const diskSectors = Math.floor(disk.size / SECTOR)
  const check = (index: number, start: number, count: number, at: number) => {
    if (start + count > diskSectors) {
      throw new CorruptError(`partition ${index} (sectors ${start}+${count}) ends past the disk's ${diskSectors} sectors`, {
        file: disk.name,
        layer: 'mbr',
        structure: index > 4 ? 'EBR' : 'MBR',
        object: index,
        offset: at,
      })
    }
  }
  let extended: RawEntry | null = null
  raw.forEach((e, i) => {
    if (e.type === 0 || e.sectors === 0) return
    if (e.type !== 0xee) check(i + 1, e.lbaStart, e.sectors, TABLE + i * ENTRY)
    table.entries.push({
      index: i + 1,
      type: e.type,
      bootable: e.status === 0x80,
      start: e.lbaStart * SECTOR,
      size: e.sectors * SECTOR,
      logical: false,
    })
    if (EXTENDED.has(e.type) && !extended) extended = e
  })
  if (extended) await readLogical(disk, extended, table, check)
  return table
}

/**
 * EBR chain: each EBR's first entry is a logical partition relative to that
 * EBR, its second the next EBR relative to the start of the extended
 * partition. Visited-set and a count cap stop cycles.
 */
async function readLogical(
  disk: Reader,
  ext: RawEntry,
  table: MbrTable,
  check: (index: number, start: number, count: number, at: number) => void,
): Promise<void> {
  const base = ext.lbaStart
  const seen = new Set<number>()
  let ebr = base
  let index = 5
  while (true) {
    const off = ebr * SECTOR
    if (seen.has(ebr)) {
      throw new CorruptError(`EBR chain loops back to sector ${ebr}`, { file: disk.name, layer: 'mbr', structure: 'EBR', offset: off })
    }
    if (seen.size >= MAX_LOGICAL) {
      throw new CorruptError(`more than ${MAX_LOGICAL} logical partitions`, { file: disk.name, layer: 'mbr', structure: 'EBR', offset: off })
    }
    if (ebr < base || ebr >= base + ext.sectors || off + SECTOR > disk.size) {
      throw new CorruptError(`EBR at sector ${ebr} is outside the extended partition (sectors ${base}+${ext.sectors})`, {
        file: disk.name,
        layer: 'mbr',
        structure: 'EBR',
        offset: off,
      })
    }
    seen.add(ebr)
    const sector = await disk.read(off, SECTOR)
    if (sector.readUInt16LE(510) !== SIGNATURE) {
      throw new CorruptError(`expected EBR signature 0xaa55, saw 0x${sector.readUInt16LE(510).toString(16)}`, {
        file: disk.name,
        layer: 'mbr',
        structure: 'EBR',
        offset: off + 510,
      })
    }
    table.sectors.push({ offset: off, structure: 'EBR' })
    const part = readEntry(sector, 0)
    const next = readEntry(sector, 1)
    if (part.type !== 0 && part.sectors !== 0) {
      const start = ebr + part.lbaStart
      check(index, start, part.sectors, off + TABLE)
      table.entries.push({ index, type: part.type, bootable: part.status === 0x80, start: start * SECTOR, size: part.sectors * SECTOR, logical: true })
      index++
    }
    if (next.type === 0 || next.sectors === 0) return
    ebr = base + next.lbaStart
  }
}
