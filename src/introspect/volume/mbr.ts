// MBR partition tables: the four primary entries at 446 and chains of
// extended boot records (EBRs) for logical partitions. Our own parser: the
// npm `mbr` package reads one sector and leaves EBR chains, loop protection
// and bounds against the disk to the caller, which is the part that matters.

import { CorruptError, NotThisFormatError, type ErrorContext } from '../errors'
import type { Reader } from '../reader'

export const SECTOR = 512
const BOOT_SIGNATURE = 0xaa55
/** Byte offset of the first of the four 16-byte partition entries. */
const PARTITION_TABLE = 446
const ENTRY_SIZE = 16
/** Most logical partitions followed in one extended partition. */
export const MAX_LOGICAL = 128
export const EXTENDED_TYPES: ReadonlySet<number> = new Set([0x05, 0x0f, 0x85])
export const GPT_PROTECTIVE = 0xee

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
  /** Primary entries (the extended container included) and logical partitions, in index order. */
  entries: MbrEntry[]
  /** Disk byte offsets of the MBR and of every EBR (one sector each). */
  sectors: { offset: number; structure: 'MBR' | 'EBR' }[]
}

interface RawEntry {
  status: number
  type: number
  lbaStart: number
  sectors: number
}

/** One 16-byte partition entry (CHS fields ignored: LBA is authoritative). */
function readEntry(sector: Buffer, slot: number): RawEntry {
  const o = PARTITION_TABLE + slot * ENTRY_SIZE
  return {
    status: sector.readUInt8(o + 0x00),
    type: sector.readUInt8(o + 0x04),
    lbaStart: sector.readUInt32LE(o + 0x08),
    sectors: sector.readUInt32LE(o + 0x0c),
  }
}

/** Sector 0 holds a boot signature and a 0xEE entry: a GPT disk's protective (or hybrid) MBR. */
export function isProtectiveMbr(sector0: Buffer): boolean {
  if (sector0.length < SECTOR || sector0.readUInt16LE(510) !== BOOT_SIGNATURE) return false
  return [0, 1, 2, 3].some((i) => readEntry(sector0, i).type === GPT_PROTECTIVE)
}

export async function readMbr(disk: Reader): Promise<MbrTable> {
  const ctx: ErrorContext = { file: disk.name, layer: 'mbr', structure: 'MBR', offset: 0 }
  if (disk.size < SECTOR) throw new NotThisFormatError(`expected at least one ${SECTOR}-byte sector, saw ${disk.size} bytes`, ctx)
  const mbr = await disk.read(0, SECTOR)
  const signature = mbr.readUInt16LE(510)
  if (signature !== BOOT_SIGNATURE) {
    throw new NotThisFormatError(`expected boot signature 0xaa55 at byte 510, saw 0x${signature.toString(16)}`, { ...ctx, offset: 510 })
  }
  const raw = [0, 1, 2, 3].map((i) => readEntry(mbr, i))
  // A bare FAT/NTFS boot sector also ends in 0xaa55: a table has status
  // bytes 0x00/0x80 only (as Linux's msdos parser demands) and an entry in use.
  const badStatus = raw.findIndex((e) => e.status !== 0 && e.status !== 0x80)
  if (badStatus >= 0) {
    throw new NotThisFormatError(`expected status 0x00 or 0x80 in entry ${badStatus + 1}, saw 0x${raw[badStatus].status.toString(16)}: a boot sector, not a partition table`, {
      ...ctx,
      offset: PARTITION_TABLE + badStatus * ENTRY_SIZE,
    })
  }
  if (raw.every((e) => e.type === 0)) throw new NotThisFormatError('expected a partition entry in use, saw four empty ones', { ...ctx, offset: PARTITION_TABLE })
  if (raw.some((e) => e.type === GPT_PROTECTIVE)) throw new NotThisFormatError('expected an MBR, saw a GPT protective MBR (type 0xee)', { ...ctx, offset: PARTITION_TABLE })

  const table: MbrTable = { entries: [], sectors: [{ offset: 0, structure: 'MBR' }] }
  const diskSectors = Math.floor(disk.size / SECTOR)
  const checkBounds = (index: number, start: number, count: number, structure: 'MBR' | 'EBR', at: number) => {
    if (start + count > diskSectors) {
      throw new CorruptError(`partition ${index}: expected sectors ${start}+${count} to end within the disk's ${diskSectors} sectors`, {
        file: disk.name,
        layer: 'mbr',
        structure,
        object: index,
        offset: at,
      })
    }
  }
  let extended: RawEntry | null = null
  raw.forEach((e, i) => {
    if (e.type === 0 || e.sectors === 0) return
    checkBounds(i + 1, e.lbaStart, e.sectors, 'MBR', PARTITION_TABLE + i * ENTRY_SIZE)
    table.entries.push({ index: i + 1, type: e.type, bootable: e.status === 0x80, start: e.lbaStart * SECTOR, size: e.sectors * SECTOR, logical: false })
    // Linux follows the first extended entry only.
    if (EXTENDED_TYPES.has(e.type) && !extended) extended = e
  })
  if (extended) await readLogical(disk, extended, table, checkBounds)
  return table
}

/**
 * The EBR chain: each EBR's first entry is a logical partition relative to
 * that EBR, its second the next EBR relative to the start of the extended
 * partition. A visited set and a count cap stop cycles and endless chains.
 */
async function readLogical(
  disk: Reader,
  ext: RawEntry,
  table: MbrTable,
  checkBounds: (index: number, start: number, count: number, structure: 'MBR' | 'EBR', at: number) => void,
): Promise<void> {
  const base = ext.lbaStart
  const seen = new Set<number>()
  let ebr = base
  let index = 5
  for (;;) {
    const off = ebr * SECTOR
    const ctx: ErrorContext = { file: disk.name, layer: 'mbr', structure: 'EBR', offset: off }
    if (seen.has(ebr)) throw new CorruptError(`EBR chain loops back to sector ${ebr}`, ctx)
    if (seen.size >= MAX_LOGICAL) throw new CorruptError(`expected at most ${MAX_LOGICAL} EBRs in the chain, saw more`, ctx)
    if (ebr >= base + ext.sectors || off + SECTOR > disk.size) {
      throw new CorruptError(`expected the EBR within the extended partition (sectors ${base}+${ext.sectors}) and the disk, saw sector ${ebr}`, ctx)
    }
    seen.add(ebr)
    const sector = await disk.read(off, SECTOR)
    const signature = sector.readUInt16LE(510)
    if (signature !== BOOT_SIGNATURE) throw new CorruptError(`expected EBR signature 0xaa55, saw 0x${signature.toString(16)}`, { ...ctx, offset: off + 510 })
    table.sectors.push({ offset: off, structure: 'EBR' })
    const part = readEntry(sector, 0)
    const next = readEntry(sector, 1)
    if (part.type !== 0 && part.sectors !== 0) {
      const start = ebr + part.lbaStart
      checkBounds(index, start, part.sectors, 'EBR', off + PARTITION_TABLE)
      table.entries.push({ index, type: part.type, bootable: part.status === 0x80, start: start * SECTOR, size: part.sectors * SECTOR, logical: true })
      index++
    }
    if (!EXTENDED_TYPES.has(next.type) || next.sectors === 0) return
    ebr = base + next.lbaStart
  }
}
