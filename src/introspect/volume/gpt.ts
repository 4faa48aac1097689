// GPT: header at LBA 1 (backup at the last LBA) and its partition entry array,
// both CRC32-checked; a bad primary falls back to the backup with a warning.
// Our own parser: the npm `gpt` package parses a buffer you hand it but does
// not pick the backup, bound entry counts against the disk or try 4 KiB
// sectors, and those decisions are the substance here.

import zlib from 'zlib'
import { CorruptError, NotThisFormatError } from '../errors'
import type { Reader } from '../reader'

const SIGNATURE = 'EFI PART'
const MIN_HEADER = 92
export const MAX_ENTRIES = 1024

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

/** GUIDs are stored mixed-endian: the first three fields little-endian. */
export function guidAt(b: Buffer, o: number): string {
  const hex = (s: number, e: number) => b.subarray(o + s, o + e).toString('hex')
  const le = (s: number, e: number) => Buffer.from(b.subarray(o + s, o + e)).reverse().toString('hex')
  return `${le(0, 4)}-${le(4, 6)}-${le(6, 8)}-${hex(8, 10)}-${hex(10, 16)}`
}

interface Header {
  lba: number
  backupLba: number
  firstUsable: number
  lastUsable: number
  diskGuid: string
  entriesLba: number
  numEntries: number
  entrySize: number
  entriesCrc: number
  headerSize: number
}

async function readHeader(disk: Reader, lba: number, ss: number, which: string): Promise<Header> {
  const off = lba * ss
  const ctx = { file: disk.name, layer: 'gpt', structure: `GPT ${which} header`, offset: off }
  if (off < 0 || off + ss > disk.size) throw new CorruptError(`header sector ${lba} is outside the disk`, ctx)
  const b = await disk.read(off, ss)
  if (b.toString('latin1', 0, 8) !== SIGNATURE) throw new NotThisFormatError(`expected "${SIGNATURE}", saw ${JSON.stringify(b.toString('latin1', 0, 8))}`, ctx)
  const headerSize = b.readUInt32LE(0x0c)
  if (headerSize < MIN_HEADER || headerSize > ss) throw new CorruptError(`header size ${headerSize} is outside ${MIN_HEADER}..${ss}`, ctx)
  const stored = b.readUInt32LE(0x10)
  const copy = Buffer.from(b.subarray(0, headerSize))
  copy.writeUInt32LE(0, 0x10)
  const crc = zlib.crc32(copy)
  if (crc !== stored) throw new CorruptError(`header CRC32 expected 0x${stored.toString(16)}, computed 0x${crc.toString(16)}`, ctx)
  const num = (o: number, what: string) => {
    const v = b.readBigUInt64LE(o)
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CorruptError(`${what} ${v} is out of range`, ctx)
    return Number(v)
  }
  const h: Header = {
    lba: num(0x18, 'current LBA'),
    backupLba: num(0x20, 'backup LBA'),
    firstUsable: num(0x28, 'first usable LBA'),
    lastUsable: num(0x30, 'last usable LBA'),
    diskGuid: guidAt(b, 0x38),
    entriesLba: num(0x48, 'entry array LBA'),
    numEntries: b.readUInt32LE(0x50),
    entrySize: b.readUInt32LE(0x54),
    entriesCrc: b.readUInt32LE(0x58),
    headerSize,
  }
  if (h.lba !== lba) throw new CorruptError(`header says it is at LBA ${h.lba}, found at LBA ${lba}`, ctx)
  if (h.numEntries > MAX_ENTRIES) throw new CorruptError(`${h.numEntries} partition entries (at most ${MAX_ENTRIES})`, ctx)
  if (h.entrySize < 128 || h.entrySize > 4096 || h.entrySize % 8 !== 0) throw new CorruptError(`entry size ${h.entrySize} is not a multiple of 8 in 128..4096`, ctx)
  if ((h.entriesLba * ss) + h.numEntries * h.entrySize > disk.size) throw new CorruptError(`entry array at LBA ${h.entriesLba} ends past the disk`, ctx)
  return h
}

async function readEntries(disk: Reader, h: Header, ss: number, which: string): Promise<GptEntry[]> {
  const off = h.entriesLba * ss
  const ctx = { file: disk.name, layer: 'gpt', structure: `GPT ${which} entry array`, offset: off }
  const b = await disk.read(off, h.numEntries * h.entrySize)
  const crc = zlib.crc32(b)
  if (crc !== h.entriesCrc) throw new CorruptError(`entry array CRC32 expected 0x${h.entriesCrc.toString(16)}, computed 0x${crc.toString(16)}`, ctx)
  const out: GptEntry[] = []
  const diskSectors = Math.floor(disk.size / ss)
  for (let i = 0; i < h.numEntries; i++) {
    const o = i * h.entrySize
    const type = guidAt(b, o)
    if (type === '00000000-0000-0000-0000-000000000000') continue
    const first = Number(b.readBigUInt64LE(o + 0x20))
    const last = Number(b.readBigUInt64LE(o + 0x28))
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last) || last < first || last >= diskSectors) {
      throw new CorruptError(`partition ${i + 1} (LBA ${first}..${last}) is outside the disk's ${diskSectors} sectors`, { ...ctx, object: i + 1, offset: off + o })
    }
    const name = b.toString('utf16le', o + 0x38, o + 0x38 + 72).replace(/\0.*$/s, '')
    out.push({
      index: i + 1,
      typeGuid: type,
      uniqueGuid: guidAt(b, o + 0x10),
      start: first * ss,
      size: (last - first + 1) * ss,
      attributes: b.readBigUInt64LE(o + 0x30),
      name,
    })
  }
  return out
}

export async function readGpt(disk: Reader): Promise<GptTable> {
  let firstError: unknown
  for (const ss of [512, 4096]) {
    if (disk.size < ss * 3) continue
    const lastLba = Math.floor(disk.size / ss) - 1
    const warnings: string[] = []
    let primary: Header | null = null
    let entries: GptEntry[] | null = null
    let primaryAbsent: NotThisFormatError | null = null
    let primaryError: unknown = null
    try {
      primary = await readHeader(disk, 1, ss, 'primary')
      entries = await readEntries(disk, primary, ss, 'primary')
    } catch (e) {
      if (e instanceof NotThisFormatError) {
        firstError ??= e
        if (!(await hasBackup(disk, lastLba, ss))) continue
        primaryAbsent = e
      }
      primaryError = e
      warnings.push(`primary GPT unusable (${(e as Error).message}); using the backup at LBA ${lastLba}`)
      primary = null
    }
    let backup: Header | null = null
    try {
      backup = await readHeader(disk, primary?.backupLba ?? lastLba, ss, 'backup')
      if (!entries) entries = await readEntries(disk, backup, ss, 'backup')
    } catch (e) {
      // No primary and no usable backup: "EFI PART" in the last sector alone
      // (a file that merely contains a GPT disk's tail) is not a GPT disk.
      if (primaryAbsent) continue
      // A corrupt primary and no backup at all: the primary's damage is the news.
      if (!primary) throw e instanceof NotThisFormatError ? primaryError : e
      warnings.push(`backup GPT header unusable (${(e as Error).message})`)
    }
    const h = (primary ?? backup) as Header
    const regions: GptTable['regions'] = [{ offset: 0, length: ss, structure: 'protective MBR' }]
    for (const [x, which] of [
      [primary, 'primary'],
      [backup, 'backup'],
    ] as const) {
      if (!x) continue
      regions.push({ offset: x.lba * ss, length: ss, structure: `GPT ${which} header` })
      regions.push({ offset: x.entriesLba * ss, length: x.numEntries * x.entrySize, structure: `GPT ${which} entry array` })
    }
    return { sectorSize: ss, diskGuid: h.diskGuid, entries: entries as GptEntry[], regions, warnings }
  }
  throw firstError ?? new NotThisFormatError('no GPT header', { file: disk.name, layer: 'gpt' })
}

async function hasBackup(disk: Reader, lastLba: number, ss: number): Promise<boolean> {
  const b = await disk.read(lastLba * ss, 8)
  return b.toString('latin1') === SIGNATURE
}
