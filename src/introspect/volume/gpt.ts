// Own parser, not npm `gpt`: that one parses a buffer you hand it but neither picks the backup, bounds entry counts against the disk nor tries 4 KiB sectors, and those decisions are the substance here.
//
// GPT (UEFI 2.x, chapter 5): a protective MBR (a 0xEE entry) in sector 0, the
// primary header at LBA 1 and its partition entry array, a backup header at
// the last LBA with its own array. Both the header and the array are CRC32
// checked; a bad primary falls back to the backup with a warning.

import zlib from 'zlib'
import { CorruptError, IntrospectError, NotThisFormatError, toSafeNumber, type ErrorContext } from '../errors'
import type { Reader } from '../reader'
import { isProtectiveMbr } from './mbr'

export const SIGNATURE = 'EFI PART'
/** Bytes of the header covered by the UEFI 2.x layout (header_size may be larger, up to a sector). */
export const HEADER_SIZE = 92
export const MAX_ENTRIES = 1024
export const SECTOR_SIZES = [512, 4096] as const
const UNUSED = '00000000-0000-0000-0000-000000000000'

export interface GptEntry {
  /** 1-based slot number in the entry array. */
  index: number
  typeGuid: string
  uniqueGuid: string
  /** Byte offset and size on the disk. */
  start: number
  size: number
  attributes: bigint
  name: string
}

export interface GptTable {
  sectorSize: number
  diskGuid: string
  entries: GptEntry[]
  /** Disk byte ranges: protective MBR, headers and entry arrays (both copies). */
  regions: { offset: number; length: number; structure: string }[]
  warnings: string[]
}

export interface GptHeader {
  which: 'primary' | 'backup'
  /** Byte offset of this header on the disk. */
  offset: number
  myLba: number
  alternateLba: number
  firstUsableLba: number
  lastUsableLba: number
  diskGuid: string
  entriesLba: number
  numEntries: number
  entrySize: number
  entriesCrc32: number
}

/** GUIDs are stored mixed-endian: the first three fields little-endian. Lower-case text. */
export function guidAt(b: Buffer, o: number): string {
  const be = (s: number, e: number) => b.subarray(o + s, o + e).toString('hex')
  const le = (s: number, e: number) => Buffer.from(b.subarray(o + s, o + e)).reverse().toString('hex')
  return `${le(0, 4)}-${le(4, 6)}-${le(6, 8)}-${be(8, 10)}-${be(10, 16)}`
}

function headerContext(disk: Reader, which: string, offset: number): ErrorContext {
  return { file: disk.name, layer: 'gpt', structure: 'GPT header', object: which, offset }
}

/**
 * The header at `lba`: NotThisFormat without the signature, CorruptError for
 * anything else wrong. Order: length, magic, header_size, CRC32, then the
 * fields against each other and the disk.
 */
export async function readHeader(disk: Reader, lba: number, ss: number, which: 'primary' | 'backup'): Promise<GptHeader> {
  const offset = lba * ss
  const ctx = headerContext(disk, which, offset)
  if (offset + ss > disk.size) throw new NotThisFormatError(`expected a header sector at LBA ${lba}, saw a disk of ${disk.size} bytes`, ctx)
  const b = await disk.read(offset, ss)
  const signature = b.toString('latin1', 0x00, 0x08)
  if (signature !== SIGNATURE) throw new NotThisFormatError(`expected signature "${SIGNATURE}", saw ${JSON.stringify(signature)}`, ctx)
  const headerSize = b.readUInt32LE(0x0c)
  if (headerSize < HEADER_SIZE || headerSize > ss) throw new CorruptError(`expected header_size in ${HEADER_SIZE}..${ss}, saw ${headerSize}`, ctx)
  verifyHeaderCrc(b, headerSize, ctx)
  const u64 = (o: number, what: string) => toSafeNumber(b.readBigUInt64LE(o), what, ctx)
  const h: GptHeader = {
    which,
    offset,
    myLba: u64(0x18, 'my_lba'),
    alternateLba: u64(0x20, 'alternate_lba'),
    firstUsableLba: u64(0x28, 'first_usable_lba'),
    lastUsableLba: u64(0x30, 'last_usable_lba'),
    diskGuid: guidAt(b, 0x38),
    entriesLba: u64(0x48, 'partition_entry_lba'),
    numEntries: b.readUInt32LE(0x50),
    entrySize: b.readUInt32LE(0x54),
    entriesCrc32: b.readUInt32LE(0x58),
  }
  const sectors = Math.floor(disk.size / ss)
  if (h.myLba !== lba) throw new CorruptError(`expected my_lba ${lba}, saw ${h.myLba}`, ctx)
  if (h.numEntries > MAX_ENTRIES) throw new CorruptError(`expected at most ${MAX_ENTRIES} partition entries, saw ${h.numEntries}`, ctx)
  if (h.entrySize < 128 || h.entrySize > 4096 || h.entrySize % 8 !== 0) throw new CorruptError(`expected an entry size that is a multiple of 8 in 128..4096, saw ${h.entrySize}`, ctx)
  if (h.firstUsableLba > h.lastUsableLba || h.lastUsableLba >= sectors) {
    throw new CorruptError(`expected usable LBAs ${h.firstUsableLba}..${h.lastUsableLba} within the disk's ${sectors} sectors`, ctx)
  }
  const arrayEnd = h.entriesLba * ss + h.numEntries * h.entrySize
  if (h.entriesLba < 1 || h.entriesLba === lba || arrayEnd > disk.size) {
    throw new CorruptError(`expected the entry array (LBA ${h.entriesLba}, ${h.numEntries * h.entrySize} bytes) on the disk apart from sector 0 and this header`, ctx)
  }
  return h
}

/** CRC32 of the first header_size bytes with the CRC field itself zeroed. */
function verifyHeaderCrc(b: Buffer, headerSize: number, ctx: ErrorContext): void {
  const stored = b.readUInt32LE(0x10)
  const copy = Buffer.from(b.subarray(0, headerSize))
  copy.writeUInt32LE(0, 0x10)
  const crc = zlib.crc32(copy)
  if (crc !== stored) throw new CorruptError(`expected header CRC32 0x${crc.toString(16)}, saw 0x${stored.toString(16)}`, ctx)
}

export async function readEntries(disk: Reader, h: GptHeader, ss: number, warnings: string[]): Promise<GptEntry[]> {
  const off = h.entriesLba * ss
  const ctx: ErrorContext = { file: disk.name, layer: 'gpt', structure: 'GPT entry array', object: h.which, offset: off }
  const b = await disk.read(off, h.numEntries * h.entrySize)
  const crc = zlib.crc32(b)
  if (crc !== h.entriesCrc32) throw new CorruptError(`expected entry array CRC32 0x${h.entriesCrc32.toString(16)} (from the header), saw 0x${crc.toString(16)}`, ctx)
  const sectors = Math.floor(disk.size / ss)
  const out: GptEntry[] = []
  for (let i = 0; i < h.numEntries; i++) {
    const o = i * h.entrySize
    const typeGuid = guidAt(b, o + 0x00)
    if (typeGuid === UNUSED) continue
    const ectx: ErrorContext = { file: disk.name, layer: 'gpt', structure: 'GPT partition entry', object: i + 1, offset: off + o }
    const first = b.readBigUInt64LE(o + 0x20)
    const last = b.readBigUInt64LE(o + 0x28)
    if (last < first || last >= BigInt(sectors)) {
      throw new CorruptError(`partition ${i + 1}: expected LBAs ${first}..${last} within the disk's ${sectors} sectors`, ectx)
    }
    const firstLba = Number(first)
    const lastLba = Number(last)
    if (firstLba < h.firstUsableLba || lastLba > h.lastUsableLba) {
      warnings.push(`GPT partition ${i + 1} (LBAs ${firstLba}..${lastLba}) lies outside the usable LBAs ${h.firstUsableLba}..${h.lastUsableLba}`)
    }
    out.push({
      index: i + 1,
      typeGuid,
      uniqueGuid: guidAt(b, o + 0x10),
      start: firstLba * ss,
      size: (lastLba - firstLba + 1) * ss,
      attributes: b.readBigUInt64LE(o + 0x30),
      // 36 UTF-16LE code units, NUL-terminated when shorter.
      name: b.toString('utf16le', o + 0x38, o + 0x38 + 72).replace(/\0[\s\S]*$/, ''),
    })
  }
  return out
}

/** A header and its entries, or the error that made them unusable. */
async function tryCopy(disk: Reader, lba: number, ss: number, which: 'primary' | 'backup') {
  try {
    const header = await readHeader(disk, lba, ss, which)
    const warnings: string[] = []
    const entries = await readEntries(disk, header, ss, warnings)
    return { header, entries, warnings, error: null }
  } catch (e) {
    if (!(e instanceof NotThisFormatError || e instanceof CorruptError)) throw e
    return { header: null, entries: null, warnings: [], error: e }
  }
}

export async function readGpt(disk: Reader): Promise<GptTable> {
  const sector0 = disk.size >= 512 ? await disk.read(0, 512) : Buffer.alloc(0)
  if (!isProtectiveMbr(sector0)) {
    throw new NotThisFormatError('expected a protective MBR (an entry of type 0xee) in sector 0', { file: disk.name, layer: 'gpt', structure: 'protective MBR', offset: 0 })
  }
  let firstCorrupt: CorruptError | null = null
  for (const ss of SECTOR_SIZES) {
    if (disk.size < ss * 3) continue
    const lastLba = Math.floor(disk.size / ss) - 1
    const primary = await tryCopy(disk, 1, ss, 'primary')
    // A good primary names its backup; without one, the backup is at the last LBA.
    const backupLba = primary.header && primary.header.alternateLba * ss + ss <= disk.size ? primary.header.alternateLba : lastLba
    const backup = await tryCopy(disk, backupLba, ss, 'backup')
    if (primary.error instanceof NotThisFormatError && backup.error instanceof NotThisFormatError) continue // no GPT with this sector size
    const warnings: string[] = []
    let used = primary
    if (!primary.header) {
      if (!backup.header) {
        // Both copies exist in some form and neither is usable: the primary's
        // context (header, entry array or the partition at fault) names it.
        const p = primary.error as IntrospectError
        const b = backup.error as IntrospectError
        const bare = (m: string) => (m.startsWith(`${disk.name} `) ? m.slice(disk.name.length + 1) : m)
        firstCorrupt ??= new CorruptError(`no usable GPT: primary: ${bare(p.message)}; backup at byte ${backupLba * ss}: ${bare(b.message)}`, {
          ...headerContext(disk, 'primary', ss),
          ...p.context,
        })
        continue
      }
      warnings.push(`primary GPT unusable (${(primary.error as Error).message}); using the backup at LBA ${backupLba}`)
      used = backup
    } else if (!backup.header) {
      warnings.push(`backup GPT unusable (${(backup.error as Error).message})`)
    }
    warnings.push(...used.warnings)
    const regions: GptTable['regions'] = [{ offset: 0, length: ss, structure: 'protective MBR' }]
    regions.push({ offset: ss, length: ss, structure: 'GPT primary header' })
    for (const copy of [primary, backup]) {
      const h = copy.header
      if (!h) continue
      if (h.which === 'backup') regions.push({ offset: h.offset, length: ss, structure: 'GPT backup header' })
      regions.push({ offset: h.entriesLba * ss, length: h.numEntries * h.entrySize, structure: `GPT ${h.which} entry array` })
    }
    if (backup.error instanceof CorruptError) regions.push({ offset: backupLba * ss, length: ss, structure: 'GPT backup header' })
    regions.sort((a, b) => a.offset - b.offset)
    const h = used.header as GptHeader
    return { sectorSize: ss, diskGuid: h.diskGuid, entries: used.entries as GptEntry[], regions, warnings }
  }
  throw firstCorrupt ?? new CorruptError(`expected a GPT header ("${SIGNATURE}") behind the protective MBR at LBA 1 or the last LBA (sectors of ${SECTOR_SIZES.join(' or ')} bytes), saw none`, {
    file: disk.name,
    layer: 'gpt',
    structure: 'GPT header',
    offset: 512,
  })
}
