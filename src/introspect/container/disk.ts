// The shared body of every container format: a GuestTable of runs, the
// container's meta-data regions, the files, an optional parent, and the one
// read path (data from the files, zeros, the parent, decompressed grains).
// A format module parses its headers and tables into these and overrides
// applyWrite (and decompress, when it has compressed grains).

import { IntrospectIOError } from './../errors'
import type { Reader } from '../reader'
import { FILE_BYTES_PER_RUN, GuestTable, maxRunsFor, MIN_RUNS, RunKind } from './guest-table'
import type { ContainerFormat, ContainerRegion, FileLocation, GuestMapping, GuestRange, VirtualDisk } from './types'

/** A file of the disk, opened read-only, that counts what it serves. */
export interface DiskFile extends Reader {
  readonly bytesRead: number
  /** Re-reads the size of a file that grew (writes allocating clusters or grains). */
  refresh(): Promise<number>
  /** The parts of [start, end) that may hold non-zero bytes (holes excluded). */
  dataRanges(start: number, end: number): Promise<[number, number][]>
  close(): Promise<void>
}

export interface DiskInit {
  format: ContainerFormat
  subformat: string
  size: number
  files: DiskFile[]
  parent?: VirtualDisk | null
  readOnlyReason?: string | null
  /** The tables that make the map, for the "too costly" message ("the qcow2 L2 tables"). */
  mapTables?: string
}

/** Largest single read the read path issues to a file. */
const MAX_CHUNK = 4 << 20

export abstract class MappedDisk implements VirtualDisk {
  readonly format: ContainerFormat
  readonly subformat: string
  readonly size: number
  readonly files: readonly string[]
  readonly parent: VirtualDisk | null
  readOnlyReason: string | null
  readonly name: string
  protected readonly table = new GuestTable()
  protected readonly fileReaders: DiskFile[]
  private regionList: ContainerRegion[] = []
  private lastGrain: { file: number; offset: number; data: Buffer } | null = null

  protected constructor(init: DiskInit) {
    this.format = init.format
    this.subformat = init.subformat
    this.size = init.size
    this.fileReaders = init.files
    this.files = init.files.map((f) => f.name)
    this.name = this.files[0]
    this.parent = init.parent ?? null
    this.readOnlyReason = init.readOnlyReason ?? null
    // The map's bound is a function of the layer's own files (parents have their own).
    const fileBytes = init.files.reduce((a, f) => a + f.size, 0)
    this.table.setLimit(maxRunsFor(fileBytes), init.mapTables ?? `the ${init.format} tables`, { file: this.name, layer: init.format, structure: init.mapTables?.replace(new RegExp(`^the (${init.format} )?`, 'i'), '') }, `at most max(${MIN_RUNS}, file bytes / ${FILE_BYTES_PER_RUN}) for ${fileBytes} bytes of files`)
  }

  /** Registers container meta-data; call setRegions once after parsing (sorted and merged there). */
  protected setRegions(list: ContainerRegion[]): void {
    const sorted = list.filter((r) => r.length > 0).sort((a, b) => a.file - b.file || a.offset - b.offset)
    const out: ContainerRegion[] = []
    for (const r of sorted) {
      const last = out[out.length - 1]
      if (last && last.file === r.file && last.structure === r.structure && last.offset + last.length >= r.offset) {
        last.length = Math.max(last.length, r.offset + r.length - last.offset)
      } else out.push({ ...r })
    }
    this.regionList = out
  }

  regions(): readonly ContainerRegion[] {
    return this.regionList
  }

  allocatedBytes(): number {
    return this.table.allocatedBytes()
  }

  mapBytes(): number {
    return this.table.memoryBytes() + this.regionList.length * 48
  }

  openBytesRead(): number {
    return this.fileReaders.reduce((a, f) => a + f.bytesRead, 0) + (this.parent ? this.parent.openBytesRead() : 0)
  }

  mapGuest(guestOffset: number): GuestMapping {
    if (guestOffset < 0 || guestOffset >= this.size) throw new RangeError(`guest offset ${guestOffset} is outside 0..${this.size}`)
    const { run, length } = this.table.lookup(guestOffset)
    const len = Math.min(length, this.size - guestOffset)
    if (!run) return this.parent ? { kind: 'parent', length: len } : { kind: 'zero', length: len }
    const into = guestOffset - run.guest
    switch (run.kind) {
      case RunKind.Data:
        return { kind: 'data', length: len, file: run.file, fileOffset: run.fileOffset + into }
      case RunKind.Zero:
        return { kind: 'zero', length: len }
      case RunKind.Compressed:
        return { kind: 'compressed', length: len, file: run.file, fileOffset: run.fileOffset, storedLength: run.storedLength, grainOffset: into }
    }
  }

  locate(file: number, fileOffset: number): FileLocation {
    const r = this.table.reverse(file, fileOffset)
    const reg = this.regionAt(file, fileOffset)
    if (r.guest !== null) {
      return r.kind === RunKind.Compressed
        ? { kind: 'compressed', guestOffset: r.guest, length: r.length, guestLength: r.guestLength }
        : { kind: 'guest', guestOffset: r.guest, length: r.length }
    }
    if (reg.region) return { kind: 'container', structure: reg.region.structure, length: reg.region.offset + reg.region.length - fileOffset }
    const fileEnd = this.fileReaders[file]?.size ?? 0
    return { kind: 'unused', length: Math.max(1, Math.min(r.length, reg.next - fileOffset, Math.max(fileEnd - fileOffset, 1))) }
  }

  private regionAt(file: number, offset: number): { region: ContainerRegion | null; next: number } {
    const list = this.regionList
    let lo = 0
    let hi = list.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      const r = list[mid]
      if (r.file < file || (r.file === file && r.offset + r.length <= offset)) lo = mid + 1
      else hi = mid
    }
    const r = list[lo]
    if (r && r.file === file && r.offset <= offset) return { region: r, next: r.offset + r.length }
    return { region: null, next: r && r.file === file ? r.offset : Infinity }
  }

  async applyWrite(_file: number, _fileOffset: number, _bytes: Buffer): Promise<GuestRange[]> {
    return []
  }

  /** Inflates one compressed grain; formats with compression override. */
  protected decompress(_file: number, _fileOffset: number, _storedLength: number): Promise<Buffer> {
    return Promise.reject(new IntrospectIOError('this format has no compressed grains', { file: this.name, layer: this.format }))
  }

  async read(offset: number, length: number): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new IntrospectIOError(`read of ${length} bytes at ${offset} is outside 0..${this.size}`, { file: this.name, offset })
    }
    const out = Buffer.alloc(length)
    const jobs: Promise<void>[] = []
    let pos = 0
    while (pos < length) {
      const m = this.mapGuest(offset + pos)
      const n = Math.min(m.length, length - pos, MAX_CHUNK)
      const at = pos
      switch (m.kind) {
        case 'zero':
          break
        case 'data':
          jobs.push(this.fileReaders[m.file].read(m.fileOffset, n).then((b) => void b.copy(out, at)))
          break
        case 'parent': {
          const parent = this.parent as VirtualDisk
          // A parent smaller than the child reads zeros past its end.
          const avail = Math.max(0, Math.min(n, parent.size - (offset + at)))
          if (avail > 0) jobs.push(parent.read(offset + at, avail).then((b) => void b.copy(out, at)))
          break
        }
        case 'compressed':
          jobs.push(this.grain(m.file, m.fileOffset, m.storedLength).then((g) => void g.copy(out, at, m.grainOffset, m.grainOffset + n)))
          break
      }
      pos += n
    }
    await Promise.all(jobs)
    return out
  }

  private async grain(file: number, fileOffset: number, storedLength: number): Promise<Buffer> {
    const last = this.lastGrain
    if (last && last.file === file && last.offset === fileOffset) return last.data
    const data = await this.decompress(file, fileOffset, storedLength)
    this.lastGrain = { file, offset: fileOffset, data }
    return data
  }

  async close(): Promise<void> {
    await Promise.all(this.fileReaders.map((f) => f.close()))
    if (this.parent) await this.parent.close()
  }
}
