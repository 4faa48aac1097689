// VHD (Microsoft's Virtual Hard Disk Image Format Specification, v1.0):
// fixed disks (the file minus its footer), dynamic disks (BAT of blocks, each
// with a sector bitmap) and differencing disks (unset bitmap bits read from
// the parent named by the parent locators). Big-endian throughout.

import { CorruptError, NotThisFormatError, UnsupportedError } from '../errors'
import { MappedDisk, type DiskFile } from './disk'
import { RunKind } from './guest-table'
import type { ContainerModule, OpenContext } from './open'
import type { ContainerRegion, GuestRange, VirtualDisk } from './types'

const SECTOR = 512
const FOOTER_COOKIE = 'conectix'
const DYN_COOKIE = 'cxsparse'
const UNUSED = 0xffffffff
const TYPE_FIXED = 2
const TYPE_DYNAMIC = 3
const TYPE_DIFFERENCING = 4
/** Largest BAT we accept: 2^22 entries (8 TiB in 2 MiB blocks), 16 MiB of table. */
const MAX_BAT = 1 << 22

export interface VhdFooter {
  dataOffset: number
  currentSize: number
  diskType: number
  creatorApp: string
}

function checksum(b: Buffer, skipAt: number): number {
  let sum = 0
  for (let i = 0; i < b.length; i++) if (i < skipAt || i >= skipAt + 4) sum += b[i]
  return ~sum >>> 0
}

export function parseFooter(b: Buffer, file: string, at: number): VhdFooter {
  const ctx = { file, layer: 'vhd', structure: 'vhd footer', offset: at }
  if (b.length < SECTOR || b.toString('latin1', 0, 8) !== FOOTER_COOKIE) throw new NotThisFormatError(`expected cookie "${FOOTER_COOKIE}", saw ${JSON.stringify(b.toString('latin1', 0, 8))}`, ctx)
  const stored = b.readUInt32BE(64)
  const sum = checksum(b.subarray(0, SECTOR), 64)
  if (stored !== sum) throw new CorruptError(`checksum expected 0x${stored.toString(16)}, computed 0x${sum.toString(16)}`, { ...ctx, offset: at + 64 })
  const data = b.readBigUInt64BE(16)
  const size = b.readBigUInt64BE(48)
  if (size > BigInt(Number.MAX_SAFE_INTEGER) || size % 512n !== 0n) throw new CorruptError(`current size ${size} is not a whole number of sectors`, { ...ctx, offset: at + 48 })
  const diskType = b.readUInt32BE(60)
  if (diskType !== TYPE_FIXED && diskType !== TYPE_DYNAMIC && diskType !== TYPE_DIFFERENCING) throw new UnsupportedError(`disk type ${diskType}`, { ...ctx, offset: at + 60 })
  return {
    dataOffset: data === 0xffffffffffffffffn ? -1 : Number(data > BigInt(Number.MAX_SAFE_INTEGER) ? -2 : data),
    currentSize: Number(size),
    diskType,
    creatorApp: b.toString('latin1', 28, 32),
  }
}

interface DynHeader {
  tableOffset: number
  maxTableEntries: number
  blockSize: number
  parentName: string
  locators: { code: string; dataSpace: number; dataLength: number; dataOffset: number }[]
}

function parseDynHeader(b: Buffer, file: string, at: number): DynHeader {
  const ctx = { file, layer: 'vhd', structure: 'vhd dynamic header', offset: at }
  if (b.toString('latin1', 0, 8) !== DYN_COOKIE) throw new CorruptError(`expected cookie "${DYN_COOKIE}", saw ${JSON.stringify(b.toString('latin1', 0, 8))}`, ctx)
  const stored = b.readUInt32BE(36)
  const sum = checksum(b.subarray(0, 1024), 36)
  if (stored !== sum) throw new CorruptError(`checksum expected 0x${stored.toString(16)}, computed 0x${sum.toString(16)}`, { ...ctx, offset: at + 36 })
  const table = b.readBigUInt64BE(16)
  if (table > BigInt(Number.MAX_SAFE_INTEGER)) throw new CorruptError(`table offset ${table} is out of range`, { ...ctx, offset: at + 16 })
  const blockSize = b.readUInt32BE(32)
  if (blockSize < SECTOR || (blockSize & (blockSize - 1)) !== 0 || blockSize > 256 << 20) throw new CorruptError(`block size ${blockSize} is not a power of two in 512..256 MiB`, { ...ctx, offset: at + 32 })
  const nameBuf = Buffer.from(b.subarray(64, 576))
  nameBuf.swap16()
  const locators = []
  for (let i = 0; i < 8; i++) {
    const o = 576 + i * 24
    const code = b.toString('latin1', o, o + 4)
    if (b.readUInt32BE(o) === 0) continue
    locators.push({ code, dataSpace: b.readUInt32BE(o + 4), dataLength: b.readUInt32BE(o + 8), dataOffset: Number(b.readBigUInt64BE(o + 16)) })
  }
  return { tableOffset: Number(table), maxTableEntries: b.readUInt32BE(28), blockSize, parentName: nameBuf.toString('utf16le').replace(/\0.*$/s, ''), locators }
}

export class VhdDisk extends MappedDisk {
  private bat = new Uint32Array(0)
  private dyn: DynHeader | null = null
  private batAt = 0
  private bitmapBytes = 0

  private constructor(file: DiskFile, size: number, subformat: string, parent: VirtualDisk | null) {
    super({ format: 'vhd', subformat, size, files: [file], parent, mapTables: 'the VHD BAT and sector bitmaps' })
  }

  static async open(file: DiskFile, ctx: OpenContext): Promise<VhdDisk> {
    if (file.size < SECTOR) throw new NotThisFormatError('smaller than a VHD footer', { file: file.name, layer: 'vhd' })
    let footerAt = file.size - SECTOR
    let footer: VhdFooter
    try {
      footer = parseFooter(await file.read(footerAt, SECTOR), file.name, footerAt)
    } catch (e) {
      // A dynamic disk whose end was cut off still has the copy at offset 0.
      if (!(e instanceof NotThisFormatError)) throw e
      footerAt = 0
      footer = parseFooter(await file.read(0, SECTOR), file.name, 0)
      if (footer.diskType === TYPE_FIXED) throw new CorruptError('fixed disk without its footer at the end', { file: file.name, layer: 'vhd', structure: 'vhd footer', offset: file.size - SECTOR })
    }
    const regions: ContainerRegion[] = [{ file: 0, offset: footerAt, length: SECTOR, structure: 'vhd footer' }]
    if (footer.diskType === TYPE_FIXED) {
      if (footer.currentSize > file.size - SECTOR) {
        throw new CorruptError(`current size ${footer.currentSize} is larger than the file's ${file.size - SECTOR} data bytes`, { file: file.name, layer: 'vhd', structure: 'vhd footer', offset: footerAt + 48 })
      }
      const d = new VhdDisk(file, footer.currentSize, 'fixed', null)
      d.table.add(0, footer.currentSize, 0, 0, RunKind.Data)
      d.table.finish()
      d.setRegions(regions)
      return d
    }
    if (footerAt !== 0) regions.push({ file: 0, offset: 0, length: SECTOR, structure: 'vhd footer copy' })
    if (footer.dataOffset < 0 || footer.dataOffset + 1024 > file.size) {
      throw new CorruptError(`dynamic header offset ${footer.dataOffset} is outside the file`, { file: file.name, layer: 'vhd', structure: 'vhd footer', offset: footerAt + 16 })
    }
    const dyn = parseDynHeader(await file.read(footer.dataOffset, 1024), file.name, footer.dataOffset)
    regions.push({ file: 0, offset: footer.dataOffset, length: 1024, structure: 'vhd dynamic header' })
    let parent: VirtualDisk | null = null
    if (footer.diskType === TYPE_DIFFERENCING) {
      const names: string[] = []
      for (const l of dyn.locators) {
        if (l.dataLength === 0 || l.dataLength > 4096 || l.dataOffset + l.dataLength > file.size) continue
        const raw = await file.read(l.dataOffset, l.dataLength)
        regions.push({ file: 0, offset: l.dataOffset, length: Math.max(l.dataSpace * (l.dataSpace < 512 ? SECTOR : 1), l.dataLength), structure: 'vhd parent locator' })
        if (l.code === 'W2ru' || l.code === 'W2ku') names.push(raw.toString('utf16le').replace(/\0.*$/s, '').replace(/\\/g, '/'))
        else if (l.code === 'Mac ' || l.code === 'MacX') names.push(decodeURIComponent(raw.toString('utf8').replace(/^file:\/\//, '')))
      }
      // Relative locators first (the store moves as a whole), then the absolute ones and the bare name.
      names.sort((a, b) => Number(a.startsWith('/') || /^[A-Za-z]:/.test(a)) - Number(b.startsWith('/') || /^[A-Za-z]:/.test(b)))
      if (dyn.parentName) names.push(dyn.parentName.split(/[\\/]/).pop() ?? dyn.parentName)
      const p = ctx.resolveRelated(file.name, names.map((n) => n.replace(/^[A-Za-z]:/, '')), 'parent', 'vhd parent locator', footer.dataOffset + 576)
      parent = await ctx.openParent(p)
    }
    try {
      const d = new VhdDisk(file, footer.currentSize, footer.diskType === TYPE_DYNAMIC ? 'dynamic' : 'differencing', parent)
      await d.load(dyn, regions)
      return d
    } catch (e) {
      await parent?.close()
      throw e
    }
  }

  private async load(dyn: DynHeader, regions: ContainerRegion[]): Promise<void> {
    const f = this.fileReaders[0]
    this.dyn = dyn
    const need = Math.ceil(this.size / dyn.blockSize)
    const ctx = { file: f.name, layer: 'vhd', structure: 'vhd BAT', offset: dyn.tableOffset }
    if (dyn.maxTableEntries < need || dyn.maxTableEntries > MAX_BAT) throw new CorruptError(`${dyn.maxTableEntries} BAT entries for ${need} blocks (at most ${MAX_BAT})`, ctx)
    const batBytes = Math.ceil((dyn.maxTableEntries * 4) / SECTOR) * SECTOR
    if (dyn.tableOffset < SECTOR || dyn.tableOffset + dyn.maxTableEntries * 4 > f.size) throw new CorruptError(`BAT of ${dyn.maxTableEntries} entries at ${dyn.tableOffset} does not fit the ${f.size}-byte file`, ctx)
    const raw = await f.read(dyn.tableOffset, dyn.maxTableEntries * 4)
    this.batAt = dyn.tableOffset
    regions.push({ file: 0, offset: dyn.tableOffset, length: batBytes, structure: 'vhd BAT' })
    this.bitmapBytes = Math.ceil(dyn.blockSize / SECTOR / 8 / SECTOR) * SECTOR
    this.bat = new Uint32Array(dyn.maxTableEntries)
    // Everything before the end of the BAT (footer copy, headers, locators) is off limits for blocks.
    const reserved = Math.max(dyn.tableOffset + batBytes, ...regions.filter((r) => r.offset < f.size - SECTOR).map((r) => r.offset + r.length))
    for (let i = 0; i < dyn.maxTableEntries; i++) {
      const s = raw.readUInt32BE(i * 4)
      this.bat[i] = s
      if (s === UNUSED || i >= need) continue
      this.checkBlock(i, s, reserved)
      regions.push({ file: 0, offset: s * SECTOR, length: this.bitmapBytes, structure: 'vhd sector bitmap' })
    }
    this.checkOverlap(need)
    for (let i = 0; i < need; i++) {
      if (this.bat[i] === UNUSED) continue
      const bitmap = this.parent ? await f.read(this.bat[i] * SECTOR, this.bitmapBytes) : null
      this.mapBlock(i, bitmap, true)
    }
    this.table.finish()
    this.setRegions(regions)
  }

  /** Two BAT entries naming one block (or overlapping ones) would map it twice: corrupt. */
  private checkOverlap(need: number): void {
    const span = this.bitmapBytes + (this.dyn as DynHeader).blockSize
    const at: number[] = []
    for (let i = 0; i < need; i++) if (this.bat[i] !== UNUSED) at.push(this.bat[i] * SECTOR)
    const sorted = Float64Array.from(at).sort()
    for (let k = 1; k < sorted.length; k++) {
      if (sorted[k] < sorted[k - 1] + span) {
        const j = this.bat.indexOf(sorted[k - 1] / SECTOR)
        const i = this.bat.findIndex((s, x) => x !== j && s === sorted[k] / SECTOR)
        throw new CorruptError(`entries ${j} and ${i} name blocks at ${sorted[k - 1]} and ${sorted[k]}, which overlap (${span} bytes each with the bitmap)`, {
          file: this.fileReaders[0].name,
          layer: 'vhd',
          structure: 'vhd BAT',
          object: i,
          offset: this.batAt + i * 4,
        })
      }
    }
  }

  private checkBlock(i: number, s: number, reserved: number): void {
    const f = this.fileReaders[0]
    const dyn = this.dyn as DynHeader
    const at = s * SECTOR
    if (at < reserved || at + this.bitmapBytes + dyn.blockSize > f.size) {
      throw new CorruptError(`entry ${i} points at sector ${s}, ${at < reserved ? 'into the header or BAT' : 'past the end of the file'}`, {
        file: f.name,
        layer: 'vhd',
        structure: 'vhd BAT',
        object: i,
        offset: this.batAt + i * 4,
      })
    }
  }

  /**
   * Maps block i: all of it (dynamic; as qemu reads it), or the sectors its
   * bitmap marks (differencing). After a write (not bulk): returns whether the
   * mapping changed; an unchanged block costs lookups, not remaps.
   */
  private mapBlock(i: number, bitmap: Buffer | null, bulk: boolean): boolean {
    const dyn = this.dyn as DynHeader
    const guest = i * dyn.blockSize
    const len = Math.min(dyn.blockSize, this.size - guest)
    const data = this.bat[i] * SECTOR + this.bitmapBytes
    // The block as runs [guest, length, file offset or -1 for unmapped].
    const runs: [number, number, number][] = []
    if (this.bat[i] === UNUSED) runs.push([guest, len, -1])
    else if (!bitmap) runs.push([guest, len, data])
    else {
      // Runs of set bits (bit 7 of byte 0 is sector 0).
      const sectors = len / SECTOR
      let k = 0
      while (k < sectors) {
        const set = (bitmap[k >> 3] >> (7 - (k & 7))) & 1
        let j = k + 1
        while (j < sectors && ((bitmap[j >> 3] >> (7 - (j & 7))) & 1) === set) j++
        runs.push([guest + k * SECTOR, (j - k) * SECTOR, set ? data + k * SECTOR : -1])
        k = j
      }
    }
    const mapping = (off: number) => (off < 0 ? null : { file: 0, fileOffset: off, kind: RunKind.Data })
    if (bulk) {
      for (const [g, n, off] of runs) if (off >= 0) this.table.add(g, n, 0, off, RunKind.Data)
      return true
    }
    if (runs.every(([g, n, off]) => this.table.matches(g, n, mapping(off)))) return false
    this.table.remap(guest, len, null)
    for (const [g, n, off] of runs) if (off >= 0) this.table.remap(g, n, mapping(off))
    return true
  }

  override async applyWrite(file: number, fileOffset: number, bytes: Buffer): Promise<GuestRange[]> {
    const dyn = this.dyn
    if (file !== 0 || !dyn || bytes.length === 0) return []
    const f = this.fileReaders[0]
    await f.refresh()
    const changed = new Set<number>()
    const need = Math.ceil(this.size / dyn.blockSize)
    // BAT entries.
    for (let i = Math.max(0, Math.floor((fileOffset - this.batAt) / 4)); i < need; i++) {
      const at = this.batAt + i * 4
      if (at >= fileOffset + bytes.length) break
      if (at < fileOffset || at + 4 > fileOffset + bytes.length) continue
      const s = bytes.readUInt32BE(at - fileOffset)
      if (s === this.bat[i]) continue
      if (s !== UNUSED) this.checkBlock(i, s, this.batAt + 4 * dyn.maxTableEntries)
      this.bat[i] = s
      changed.add(i)
    }
    // Sector bitmaps of differencing disks: which sectors the child now holds.
    if (this.parent) {
      for (let i = 0; i < need; i++) {
        const at = this.bat[i] * SECTOR
        if (this.bat[i] !== UNUSED && at < fileOffset + bytes.length && at + this.bitmapBytes > fileOffset) changed.add(i)
      }
    }
    const out: GuestRange[] = []
    // A changed block of a fragmented map costs time in proportion to it (the run arrays shift):
    // a live update yields to the event loop every few ms, so other images' I/O goes on.
    let slice = performance.now()
    for (const i of changed) {
      if (performance.now() - slice > YIELD_MS) {
        await new Promise((r) => setImmediate(r))
        slice = performance.now()
      }
      let bitmap: Buffer | null = null
      if (this.parent && this.bat[i] !== UNUSED) {
        bitmap = Buffer.from(await f.read(this.bat[i] * SECTOR, this.bitmapBytes))
        const at = this.bat[i] * SECTOR
        const lo = Math.max(at, fileOffset)
        const hi = Math.min(at + this.bitmapBytes, fileOffset + bytes.length)
        if (hi > lo) bytes.copy(bitmap, lo - at, lo - fileOffset, hi - fileOffset)
      }
      if (this.mapBlock(i, bitmap, false)) out.push({ offset: i * dyn.blockSize, length: Math.min(dyn.blockSize, this.size - i * dyn.blockSize) })
    }
    return out
  }
}

/** Longest stretch of live table updates between yields to the event loop (ms). */
const YIELD_MS = 5

export const vhdFormat: ContainerModule = {
  format: 'vhd',
  async probe(head, file) {
    if (head.toString('latin1', 0, 8) === FOOTER_COOKIE) return true
    if (file.size < SECTOR) return false
    return (await file.read(file.size - SECTOR, 8)).toString('latin1') === FOOTER_COOKIE
  },
  open: (file, ctx) => VhdDisk.open(file, ctx),
}
