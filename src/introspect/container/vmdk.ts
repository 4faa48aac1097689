// VMDK (VMware Virtual Disk Format 1.1 and qemu's block/vmdk.c as the
// reference for what real images hold): text descriptors with their extents
// (monolithicFlat, twoGbMaxExtentFlat, vmfs), hosted sparse extents
// (monolithicSparse with an embedded descriptor, twoGbMaxExtentSparse),
// streamOptimized (compressed grains with markers, mapped read-only) and
// delta disks through parentFileNameHint.

import zlib from 'zlib'
import { CorruptError, IntrospectIOError, NotThisFormatError, UnsupportedError } from '../errors'
import { MappedDisk, type DiskFile } from './disk'
import { RunKind } from './guest-table'
import type { ContainerModule, OpenContext } from './open'
import type { ContainerRegion, GuestRange, VirtualDisk } from './types'

const SECTOR = 512

/** Longest stretch of live table updates between yields to the event loop (ms). */
const YIELD_MS = 5

export const SPARSE_MAGIC = 0x564d444b // "KDMV"
const COWD_MAGIC = 0x44574f43 // "COWD": ESX vmfsSparse
const GD_AT_END = 0xffffffffffffffffn
const FLAG_REDUNDANT = 1 << 1
const FLAG_ZEROED_GTE = 1 << 2
const FLAG_COMPRESSED = 1 << 16
const FLAG_MARKERS = 1 << 17
/** Text descriptors larger than this are refused (VMware's own are well under 4 KiB). */
export const MAX_DESCRIPTOR = 64 << 10
const MAX_EXTENTS = 1024
const DESCRIPTOR_MAGIC = '# Disk DescriptorFile'

export interface SparseHeader {
  version: number
  flags: number
  capacity: number
  grainSize: number
  descriptorOffset: number
  descriptorSize: number
  numGTEsPerGT: number
  rgdOffset: number
  gdOffset: number
  overHead: number
  compressAlgorithm: number
}

export function parseSparseHeader(b: Buffer, file: string, at = 0): SparseHeader {
  const ctx = { file, layer: 'vmdk', structure: 'vmdk header', offset: at }
  if (b.length < SECTOR) throw new NotThisFormatError(`expected a ${SECTOR}-byte sparse header, saw ${b.length} bytes`, ctx)
  if (b.readUInt32LE(0) !== SPARSE_MAGIC) throw new NotThisFormatError(`expected magic KDMV, saw 0x${b.readUInt32LE(0).toString(16)}`, ctx)
  const sectors = (o: number, what: string) => {
    const v = b.readBigUInt64LE(o)
    if (v === GD_AT_END && what === 'gdOffset') return -1
    if (v > BigInt(Math.floor(Number.MAX_SAFE_INTEGER / SECTOR))) throw new CorruptError(`${what} ${v} is out of range`, { ...ctx, offset: at + o })
    return Number(v)
  }
  const h: SparseHeader = {
    version: b.readUInt32LE(4),
    flags: b.readUInt32LE(8),
    capacity: sectors(12, 'capacity'),
    grainSize: sectors(20, 'grainSize'),
    descriptorOffset: sectors(28, 'descriptorOffset'),
    descriptorSize: sectors(36, 'descriptorSize'),
    numGTEsPerGT: b.readUInt32LE(44),
    rgdOffset: sectors(48, 'rgdOffset'),
    gdOffset: sectors(56, 'gdOffset'),
    overHead: sectors(64, 'overHead'),
    compressAlgorithm: b.readUInt16LE(77),
  }
  if (h.version < 1 || h.version > 3) throw new UnsupportedError(`version ${h.version} (1 to 3 exist)`, { ...ctx, offset: at + 4 })
  if (h.grainSize < 1 || h.grainSize > 1 << 16 || (h.grainSize & (h.grainSize - 1)) !== 0) {
    throw new CorruptError(`grainSize ${h.grainSize} sectors is not a power of two in 1..65536`, { ...ctx, offset: at + 20 })
  }
  if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > 1 << 16) throw new CorruptError(`numGTEsPerGT ${h.numGTEsPerGT} is outside 1..65536`, { ...ctx, offset: at + 44 })
  if (h.flags & FLAG_COMPRESSED && h.compressAlgorithm !== 1) throw new UnsupportedError(`compression algorithm ${h.compressAlgorithm} (only deflate, 1)`, { ...ctx, offset: at + 77 })
  return Object.freeze(h)
}

export interface ExtentLine {
  access: 'RW' | 'RDONLY' | 'NOACCESS'
  sectors: number
  type: 'FLAT' | 'SPARSE' | 'ZERO' | 'VMFS' | 'VMFSSPARSE' | 'VMFSRDM' | 'VMFSRAW'
  file: string
  offset: number
}

export interface Descriptor {
  version: number
  cid: string
  parentCid: string
  createType: string
  parentFileNameHint: string | null
  extents: ExtentLine[]
  ddb: Record<string, string>
}

/** Parses descriptor text (bounded by the caller); errors name the line. */
export function parseDescriptor(text: string, file: string, at: number): Descriptor {
  const d: Descriptor = { version: 1, cid: '', parentCid: 'ffffffff', createType: '', parentFileNameHint: null, extents: [], ddb: {} }
  const lines = text.split(/\r?\n/)
  lines.forEach((raw, n) => {
    const line = raw.replace(/\0.*$/s, '').trim()
    if (!line || line.startsWith('#')) return
    const ctx = { file, layer: 'vmdk', structure: 'descriptor', offset: at, object: `line ${n + 1}` }
    const ext = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(FLAT|SPARSE|ZERO|VMFS|VMFSSPARSE|VMFSRDM|VMFSRAW)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$/.exec(line)
    if (ext) {
      if (d.extents.length >= MAX_EXTENTS) throw new CorruptError(`more than ${MAX_EXTENTS} extents`, ctx)
      d.extents.push({ access: ext[1] as ExtentLine['access'], sectors: Number(ext[2]), type: ext[3] as ExtentLine['type'], file: ext[4] ?? '', offset: Number(ext[5] ?? 0) })
      if (!Number.isSafeInteger(Number(ext[2]) * SECTOR)) throw new CorruptError(`extent of ${ext[2]} sectors is out of range`, ctx)
      if (ext[3] !== 'ZERO' && !ext[4]) throw new CorruptError(`${ext[3]} extent without a file name`, ctx)
      return
    }
    const kv = /^([A-Za-z0-9_.]+)\s*=\s*"?([^"]*)"?\s*$/.exec(line)
    if (!kv) throw new CorruptError(`cannot parse ${JSON.stringify(line.slice(0, 80))}`, ctx)
    const [, k, v] = kv
    if (k.startsWith('ddb.')) d.ddb[k] = v
    else if (k === 'version') d.version = Number(v)
    else if (k === 'CID') d.cid = v
    else if (k === 'parentCID') d.parentCid = v
    else if (k === 'createType') d.createType = v
    else if (k === 'parentFileNameHint') d.parentFileNameHint = v
  })
  if (!d.extents.length) throw new CorruptError('descriptor names no extent', { file, layer: 'vmdk', structure: 'descriptor', offset: at })
  return d
}

interface SparseExtent {
  /** Index into files. */
  file: number
  header: SparseHeader
  /** Grain directory entries: GT sector offsets (0 = none). */
  gd: Float64Array
  /** Byte offsets of the primary grain tables, sorted, and the GD index of each (applyWrite finds tables by position). */
  gtAt: Float64Array
  gtGd: Uint32Array
  stream: boolean
}

/** Rebuilds the sorted table positions of an extent from its GD. */
function indexTables(ext: SparseExtent): void {
  const order = [...ext.gd.keys()].filter((i) => ext.gd[i]).sort((a, b) => ext.gd[a] - ext.gd[b])
  ext.gtAt = Float64Array.from(order, (i) => ext.gd[i] * SECTOR)
  ext.gtGd = Uint32Array.from(order)
}

export class VmdkDisk extends MappedDisk {
  private readonly sparse: { ext: SparseExtent; guest: number }[] = []
  /** Compressed grains found while loading a stream: their stored lengths are known once all are. */
  private pendingCompressed: [guest: number, length: number, file: number, offset: number][] = []

  private constructor(files: DiskFile[], size: number, subformat: string, parent: VirtualDisk | null, readOnly: string | null) {
    super({ format: 'vmdk', subformat, size, files, parent, readOnlyReason: readOnly, mapTables: 'the VMDK grain tables' })
  }

  static async open(file: DiskFile, ctx: OpenContext): Promise<VmdkDisk> {
    const head = await file.read(0, Math.min(file.size, SECTOR))
    const files: DiskFile[] = [file]
    const regions: ContainerRegion[] = []
    let desc: Descriptor
    let descAt: number
    let embedded = false
    if (head.length >= 4 && head.readUInt32LE(0) === COWD_MAGIC) {
      throw new UnsupportedError('ESX vmfsSparse (COWD) extents are not supported', { file: file.name, layer: 'vmdk', structure: 'vmdk header', offset: 0 })
    }
    if (head.length >= 4 && head.readUInt32LE(0) === SPARSE_MAGIC) {
      const h = parseSparseHeader(head, file.name)
      if (!h.descriptorOffset || !h.descriptorSize) {
        throw new UnsupportedError('a sparse extent without an embedded descriptor: open its descriptor file instead', { file: file.name, layer: 'vmdk', structure: 'vmdk header', offset: 28 })
      }
      descAt = h.descriptorOffset * SECTOR
      const len = h.descriptorSize * SECTOR
      if (len > MAX_DESCRIPTOR || descAt + len > file.size) {
        throw new CorruptError(`embedded descriptor ${descAt}+${len} is larger than ${MAX_DESCRIPTOR} bytes or past the file`, { file: file.name, layer: 'vmdk', structure: 'embedded descriptor', offset: 28 })
      }
      desc = parseDescriptor((await file.read(descAt, len)).toString('latin1'), file.name, descAt)
      regions.push({ file: 0, offset: descAt, length: len, structure: 'embedded descriptor' })
      embedded = true
    } else {
      if (file.size > MAX_DESCRIPTOR) {
        throw new CorruptError(`descriptor file of ${file.size} bytes is larger than ${MAX_DESCRIPTOR}`, { file: file.name, layer: 'vmdk', structure: 'descriptor', offset: 0 })
      }
      descAt = 0
      desc = parseDescriptor((await file.read(0, file.size)).toString('latin1'), file.name, 0)
      regions.push({ file: 0, offset: 0, length: file.size, structure: 'descriptor' })
    }
    const opened: DiskFile[] = []
    let parent: VirtualDisk | null = null
    try {
      // Extent files, each opened once (monolithicSparse names itself).
      const index = new Map<string, number>([[file.name, 0]])
      const extentFile = async (name: string, n: number): Promise<number> => {
        const p = ctx.resolveRelated(file.name, [name], `extent ${n + 1}`, 'descriptor', descAt)
        const known = index.get(p)
        if (known !== undefined) return known
        const f = await ctx.openFile(p)
        opened.push(f)
        files.push(f)
        index.set(p, files.length - 1)
        return files.length - 1
      }
      const entries: { line: ExtentLine; file: number }[] = []
      for (const [n, e] of desc.extents.entries()) {
        if (e.access === 'NOACCESS') throw new UnsupportedError(`extent ${n + 1} is NOACCESS`, { file: file.name, layer: 'vmdk', structure: 'descriptor', offset: descAt })
        if (e.type === 'VMFSSPARSE' || e.type === 'VMFSRDM' || e.type === 'VMFSRAW') {
          throw new UnsupportedError(`extent type ${e.type} is not supported`, { file: file.name, layer: 'vmdk', structure: 'descriptor', offset: descAt, object: n + 1 })
        }
        // An embedded descriptor's one sparse extent is the file itself, whatever it was renamed to (as qemu reads it).
        const self = embedded && e.type === 'SPARSE' && desc.extents.filter((x) => x.type === 'SPARSE').length === 1
        entries.push({ line: e, file: e.type === 'ZERO' ? -1 : self ? 0 : await extentFile(e.file, n) })
      }
      if (desc.parentFileNameHint && desc.parentCid.toLowerCase() !== 'ffffffff') {
        const p = ctx.resolveRelated(file.name, [desc.parentFileNameHint, desc.parentFileNameHint.split(/[\\/]/).pop() ?? ''], 'parent', 'parentFileNameHint', descAt)
        parent = await ctx.openParent(p)
      }
      const size = entries.reduce((a, e) => a + e.line.sectors * SECTOR, 0)
      // Each extent is checked when parsed; their sum (ZERO extents cost nothing to claim) is checked here.
      if (!Number.isSafeInteger(size)) {
        const sectors = entries.reduce((a, e) => a + BigInt(e.line.sectors), 0n)
        throw new CorruptError(`extents add up to ${sectors} sectors, more than the ${Number.MAX_SAFE_INTEGER} bytes a disk can have`, { file: file.name, layer: 'vmdk', structure: 'descriptor', offset: descAt })
      }
      let stream = false
      for (const e of entries) if (e.line.type === 'SPARSE' && desc.createType === 'streamOptimized') stream = true
      const disk = new VmdkDisk(files, size, desc.createType || 'unknown', parent, stream ? 'streamOptimized grains are compressed: mapped read-only' : null)
      await disk.load(entries, regions)
      return disk
    } catch (e) {
      await Promise.all(opened.map((f) => f.close().catch(() => undefined)))
      await parent?.close().catch(() => undefined)
      throw e
    }
  }

  private async load(entries: { line: ExtentLine; file: number }[], regions: ContainerRegion[]): Promise<void> {
    let guest = 0
    for (const [n, { line, file }] of entries.entries()) {
      const bytes = line.sectors * SECTOR
      if (line.type === 'FLAT' || line.type === 'VMFS') {
        const f = this.fileReaders[file]
        const off = line.offset * SECTOR
        if (off + bytes > f.size) {
          throw new CorruptError(`extent ${n + 1} (${bytes} bytes at ${off}) runs past its ${f.size}-byte file`, { file: f.name, layer: 'vmdk', structure: 'flat extent', object: n + 1 })
        }
        this.table.add(guest, bytes, file, off, RunKind.Data)
      } else if (line.type === 'ZERO') {
        this.table.add(guest, bytes, 0, 0, RunKind.Zero)
      } else {
        await this.loadSparse(n, file, guest, bytes, regions)
      }
      guest += bytes
    }
    this.table.finish()
    this.setRegions(regions)
  }

  private async loadSparse(n: number, file: number, guest: number, bytes: number, regions: ContainerRegion[]): Promise<void> {
    const f = this.fileReaders[file]
    const name = f.name
    let h = parseSparseHeader(await f.read(0, SECTOR), name)
    regions.push({ file, offset: 0, length: SECTOR, structure: 'vmdk header' })
    // Compressed grains with markers (streamOptimized): the GD may be in the header (qemu) or in the footer.
    let stream = (h.flags & (FLAG_COMPRESSED | FLAG_MARKERS)) !== 0
    if (h.gdOffset === -1) {
      // streamOptimized: the real header is the footer, one sector before the end-of-stream marker.
      if (f.size < 3 * SECTOR) throw new CorruptError('stream ends before its footer', { file: name, layer: 'vmdk', structure: 'footer', offset: f.size })
      const footerAt = f.size - 2 * SECTOR
      h = parseSparseHeader(await f.read(footerAt, SECTOR), name, footerAt)
      regions.push({ file, offset: f.size - 3 * SECTOR, length: 3 * SECTOR, structure: 'footer and end-of-stream markers' })
      if (h.gdOffset === -1) throw new CorruptError('footer has no grain directory offset', { file: name, layer: 'vmdk', structure: 'footer', offset: footerAt + 56 })
      stream = true
    }
    if (h.capacity * SECTOR < bytes) throw new CorruptError(`capacity ${h.capacity} sectors is smaller than the extent's ${bytes / SECTOR}`, { file: name, layer: 'vmdk', structure: 'vmdk header', offset: 12 })
    const perGT = h.numGTEsPerGT
    const gdEntries = Math.ceil(h.capacity / (h.grainSize * perGT))
    const gdBytes = gdEntries * 4
    const gdAt = h.gdOffset * SECTOR
    const ctx = { file: name, layer: 'vmdk', structure: 'grain directory', offset: gdAt }
    if (gdAt < SECTOR || gdAt + gdBytes > f.size) throw new CorruptError(`grain directory of ${gdEntries} entries at ${gdAt} does not fit the ${f.size}-byte file`, ctx)
    const gdBuf = await f.read(gdAt, gdBytes)
    regions.push({ file, offset: gdAt, length: gdBytes, structure: 'grain directory' })
    const gtBytes = perGT * 4
    const gd = new Float64Array(gdEntries)
    for (let i = 0; i < gdEntries; i++) {
      const s = gdBuf.readUInt32LE(i * 4)
      if (s && (s * SECTOR < SECTOR || s * SECTOR + gtBytes > f.size)) {
        throw new CorruptError(`entry ${i} points at sector ${s}, past the end of the file`, { ...ctx, object: i, offset: gdAt + i * 4 })
      }
      gd[i] = s
    }
    if (h.flags & FLAG_REDUNDANT && h.rgdOffset) {
      const rgdAt = h.rgdOffset * SECTOR
      if (rgdAt + gdBytes <= f.size) {
        const rgd = await f.read(rgdAt, gdBytes)
        regions.push({ file, offset: rgdAt, length: gdBytes, structure: 'redundant grain directory' })
        for (let i = 0; i < gdEntries; i++) {
          const s = rgd.readUInt32LE(i * 4)
          if (s && s * SECTOR + gtBytes <= f.size) pushRegion(regions, { file, offset: s * SECTOR, length: gtBytes, structure: 'redundant grain table' })
        }
      }
    }
    const ext: SparseExtent = { file, header: h, gd, gtAt: new Float64Array(0), gtGd: new Uint32Array(0), stream }
    indexTables(ext)
    // One grain table named by two directory entries (or two overlapping) would map its grains twice: corrupt.
    for (let t = 1; t < ext.gtAt.length; t++) {
      if (ext.gtAt[t] < ext.gtAt[t - 1] + gtBytes) {
        throw new CorruptError(`entries ${ext.gtGd[t - 1]} and ${ext.gtGd[t]} name grain tables at ${ext.gtAt[t - 1]} and ${ext.gtAt[t]}, which overlap (${gtBytes} bytes each)`, {
          ...ctx,
          object: ext.gtGd[t],
          offset: gdAt + ext.gtGd[t] * 4,
        })
      }
    }
    this.sparse.push({ ext, guest })
    // Grain tables: sorted by position, adjacent ones in one read of up to 4 MiB. Tables
    // that lie in holes of the file are all zeros (qemu preallocates them as holes): not read.
    const order = Array.from(ext.gtGd)
    for (const i of order) {
      const at = gd[i] * SECTOR
      pushRegion(regions, { file, offset: at, length: gtBytes, structure: 'grain table' })
      if (stream) regions.push({ file, offset: at - SECTOR, length: SECTOR, structure: 'stream marker' })
    }
    const data = order.length ? await f.dataRanges(gd[order[0]] * SECTOR, gd[order[order.length - 1]] * SECTOR + gtBytes) : []
    let d = 0
    const holds = (at: number) => {
      while (d < data.length && data[d][1] <= at) d++
      return d < data.length && data[d][0] < at + gtBytes
    }
    const used = order.filter((i) => holds(gd[i] * SECTOR))
    for (let k = 0; k < used.length; ) {
      let j = k + 1
      while (j < used.length && gd[used[j]] * SECTOR === gd[used[j - 1]] * SECTOR + gtBytes && (j - k + 1) * gtBytes <= 4 << 20) j++
      const buf = await f.read(gd[used[k]] * SECTOR, (j - k) * gtBytes)
      for (let t = k; t < j; t++) await this.addGT(ext, guest, bytes, used[t], buf.subarray((t - k) * gtBytes, (t - k + 1) * gtBytes), true)
      k = j
    }
    if (stream) {
      regions.push({ file, offset: gdAt - SECTOR, length: SECTOR, structure: 'stream marker' })
      // Grains are packed one after another: each one's stored bytes end where the next
      // grain or structure starts (its marker's size field, read lazily, is within that).
      const starts = [...this.pendingCompressed.map((p) => p[3]), ...regions.filter((r) => r.file === file && r.offset > 0).map((r) => r.offset)].sort((a, b) => a - b)
      for (const [g, len, fi, off] of this.pendingCompressed) {
        let lo = 0
        let hi = starts.length
        while (lo < hi) {
          const mid = (lo + hi) >>> 1
          if (starts[mid] <= off) lo = mid + 1
          else hi = mid
        }
        const end = lo < starts.length ? starts[lo] : f.size
        this.table.add(g, len, fi, off, RunKind.Compressed, Math.min(end, f.size) - off)
      }
      this.pendingCompressed = []
    }
  }

  /** Entries of GT `gdIndex` into the table: bulk (add) at open, remap after a write. */
  private async addGT(ext: SparseExtent, guest: number, extentBytes: number, gdIndex: number, gt: Buffer, bulk: boolean): Promise<GuestRange[]> {
    const h = ext.header
    const grain = h.grainSize * SECTOR
    const f = this.fileReaders[ext.file]
    const changed: GuestRange[] = []
    // A 32-bit view to skip unallocated entries fast (a 2 TiB disk has 33 million of them).
    const words = gt.byteOffset % 4 === 0 ? new Uint32Array(gt.buffer, gt.byteOffset, gt.length >>> 2) : new Uint32Array(Uint8Array.from(gt).buffer)
    // A changed entry of a fragmented map costs time in proportion to it (the run arrays shift):
    // a live update yields to the event loop every few ms, so other images' I/O goes on.
    let slice = performance.now()
    for (let e = 0; e < h.numGTEsPerGT; e++) {
      if (bulk && words[e] === 0) continue
      if (!bulk && performance.now() - slice > YIELD_MS) {
        await new Promise((r) => setImmediate(r))
        slice = performance.now()
      }
      const inExtent = (gdIndex * h.numGTEsPerGT + e) * grain
      if (inExtent >= extentBytes) break
      const g = guest + inExtent
      const len = Math.min(grain, extentBytes - inExtent)
      const s = gt.readUInt32LE(e * 4)
      const at = () => ({ file: f.name, layer: 'vmdk', structure: 'grain table', object: `${gdIndex}/${e}`, offset: ext.gd[gdIndex] * SECTOR + e * 4 })
      let m: { kind: RunKind; fileOffset: number; stored: number } | null = null
      if (s === 1 && (h.flags & FLAG_ZEROED_GTE || !ext.stream)) m = { kind: RunKind.Zero, fileOffset: 0, stored: 0 }
      else if (s) {
        const off = s * SECTOR
        if (ext.stream || h.flags & FLAG_COMPRESSED) {
          if (off + 12 > f.size) throw new CorruptError(`grain marker at ${off} is past the end of the file`, at())
          m = { kind: RunKind.Compressed, fileOffset: off, stored: 0 }
        } else {
          if (s < h.overHead || off + grain > f.size) throw new CorruptError(`grain at sector ${s} is inside the header and tables or past the end of the file`, at())
          m = { kind: RunKind.Data, fileOffset: off, stored: 0 }
        }
      }
      if (bulk) {
        if (m?.kind === RunKind.Compressed) this.pendingCompressed.push([g, len, ext.file, m.fileOffset])
        else if (m) this.table.add(g, len, ext.file, m.fileOffset, m.kind)
        continue
      }
      const mapping = m ? { file: ext.file, fileOffset: m.fileOffset, kind: m.kind } : null
      // A rewritten table with unchanged entries costs lookups, not remaps.
      if (this.table.matches(g, len, mapping)) continue
      const before = this.mapGuest(g)
      this.table.remap(g, len, mapping)
      const after = this.mapGuest(g)
      if (before.kind !== after.kind || (before as { fileOffset?: number }).fileOffset !== (after as { fileOffset?: number }).fileOffset) changed.push({ offset: g, length: len })
    }
    return changed
  }

  protected override async decompress(file: number, fileOffset: number, _storedLength: number): Promise<Buffer> {
    const f = this.fileReaders[file]
    const marker = await f.read(fileOffset, 12)
    const size = marker.readUInt32LE(8)
    const ext = this.sparse.find((s) => s.ext.file === file)?.ext
    const grain = (ext?.header.grainSize ?? 128) * SECTOR
    if (size === 0 || fileOffset + 12 + size > f.size || size > grain * 2 + 1024) {
      throw new CorruptError(`compressed grain of ${size} bytes at ${fileOffset} does not fit the file`, { file: f.name, layer: 'vmdk', structure: 'grain marker', offset: fileOffset })
    }
    const data = await f.read(fileOffset + 12, size)
    let out: Buffer
    try {
      out = zlib.inflateSync(data, { maxOutputLength: grain })
    } catch (e) {
      throw new IntrospectIOError(`compressed grain does not inflate: ${(e as Error).message}`, { file: f.name, layer: 'vmdk', structure: 'grain', offset: fileOffset })
    }
    return out.length < grain ? Buffer.concat([out, Buffer.alloc(grain - out.length)]) : out
  }

  override async applyWrite(file: number, fileOffset: number, bytes: Buffer): Promise<GuestRange[]> {
    const changed: GuestRange[] = []
    const f = this.fileReaders[file]
    if (!f || bytes.length === 0) return changed
    await f.refresh()
    for (const [k, { ext, guest }] of this.sparse.entries()) {
      if (ext.file !== file || ext.stream) continue
      const h = ext.header
      const gtBytes = h.numGTEsPerGT * 4
      const extentBytes = this.extentBytes(k)
      // A GD entry written: a new grain table.
      const gdAt = h.gdOffset * SECTOR
      for (let i = 0; i < ext.gd.length; i++) {
        const at = gdAt + i * 4
        if (at < fileOffset || at + 4 > fileOffset + bytes.length) continue
        const s = bytes.readUInt32LE(at - fileOffset)
        if (s === ext.gd[i]) continue
        if (s && s * SECTOR + gtBytes > f.size) throw new CorruptError(`entry ${i} points at sector ${s}, past the end of the file`, { file: f.name, layer: 'vmdk', structure: 'grain directory', object: i, offset: at })
        ext.gd[i] = s
        indexTables(ext)
        if (s) {
          changed.push(...(await this.addGT(ext, guest, extentBytes, i, await f.read(s * SECTOR, gtBytes), false)))
        }
      }
      // Grain-table entries written: the tables overlapping the write (binary search by position).
      let lo = 0
      let hi = ext.gtAt.length
      while (lo < hi) {
        const mid = (lo + hi) >>> 1
        if (ext.gtAt[mid] + gtBytes <= fileOffset) lo = mid + 1
        else hi = mid
      }
      for (let t = lo; t < ext.gtAt.length && ext.gtAt[t] < fileOffset + bytes.length; t++) {
        const c = ext.gtAt[t]
        const gt = Buffer.from(await f.read(c, gtBytes))
        // Overlay the written bytes (the caller may apply before the write reaches the file).
        const from = Math.max(c, fileOffset)
        const to = Math.min(c + gtBytes, fileOffset + bytes.length)
        if (to > from) bytes.copy(gt, from - c, from - fileOffset, to - fileOffset)
        changed.push(...(await this.addGT(ext, guest, extentBytes, ext.gtGd[t], gt, false)))
      }
    }
    return changed
  }

  private extentBytes(k: number): number {
    const next = this.sparse[k + 1]?.guest
    const s = this.sparse[k]
    // The extent ends where the next sparse extent starts, or at the capacity its header gives.
    return Math.min(s.ext.header.capacity * SECTOR, (next ?? this.size) - s.guest)
  }
}

/** Appends a region, extending the last one when it continues it (a 2 TiB disk has 65,536 tables a copy). */
function pushRegion(list: ContainerRegion[], r: ContainerRegion): void {
  const last = list[list.length - 1]
  if (last && last.file === r.file && last.structure === r.structure && last.offset + last.length === r.offset) last.length += r.length
  else list.push(r)
}

export const vmdkFormat: ContainerModule = {
  format: 'vmdk',
  async probe(head) {
    if (head.length >= 4 && (head.readUInt32LE(0) === SPARSE_MAGIC || head.readUInt32LE(0) === COWD_MAGIC)) return true
    return head.toString('latin1', 0, DESCRIPTOR_MAGIC.length) === DESCRIPTOR_MAGIC
  },
  open: (file, ctx) => VmdkDisk.open(file, ctx),
}
