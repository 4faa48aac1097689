// qcow2, versions 2 and 3 (qemu docs/interop/qcow2.txt): header and its
// extensions, the two-level L1/L2 cluster map, compressed clusters (mapped
// read-only), zero clusters, backing files; refcount and snapshot tables are
// listed as container meta-data. Encrypted images, external data files,
// extended L2 entries and zstd compression are reported unsupported.
// The header and its extensions: qcow2-header.ts.

import zlib from 'zlib'
import { CorruptError, UnsupportedError } from '../errors'
import { MappedDisk, type DiskFile } from './disk'
import { RunKind } from './guest-table'
import { MAX_L1_BYTES, parseQcow2Extensions, parseQcow2Header, QCOW2_MAGIC, type Qcow2Header } from './qcow2-header'
import type { ContainerModule, OpenContext } from './open'
import type { ContainerRegion, GuestMapping, GuestRange, VirtualDisk } from './types'

const OFFSET_MASK = 0x00fffffffffffe00n
const L2_COMPRESSED = 1n << 62n
const L2_ZERO = 1n
/** Bits an L1 entry and a standard (uncompressed) L2 entry must leave clear; qemu calls an image with them set corrupt. */
const L1_RESERVED = 0x7f000000000001ffn
const L2_RESERVED = 0x3f000000000001fen

export class Qcow2Disk extends MappedDisk {
  private readonly cluster: number
  private readonly l2Entries: number
  private readonly file: DiskFile
  private l1 = new Float64Array(0)
  /** L2 table file offset → L1 index (to re-parse written L2 entries). */
  private readonly l2Owner = new Map<number, number>()
  /** Refcount table index → refcount block file offset (nonzero entries only). */
  private readonly refcountBlocks = new Map<number, number>()
  /** Regions that do not move: header, L1, refcount and snapshot tables. L2 tables and refcount blocks come from l2Owner and refcountBlocks. */
  private fixedRegions: ContainerRegion[] = []
  private readonly header: Qcow2Header
  /** The backing file format the header extension names ('' when absent); the probe chain decides what the parent is. */
  backingFormat = ''
  private readonly csizeShift: number
  private readonly csizeMask: bigint
  private readonly coffsetMask: bigint

  private constructor(file: DiskFile, h: Qcow2Header, parent: VirtualDisk | null) {
    super({
      format: 'qcow2',
      subformat: h.version === 2 ? 'v2' : 'v3',
      size: h.size,
      files: [file],
      parent,
      mapTables: 'the qcow2 L2 tables',
    })
    this.file = file
    this.header = h
    this.cluster = 2 ** h.clusterBits
    this.l2Entries = this.cluster / 8
    this.csizeShift = 62 - (h.clusterBits - 8)
    this.csizeMask = (1n << BigInt(h.clusterBits - 8)) - 1n
    this.coffsetMask = (1n << BigInt(this.csizeShift)) - 1n
  }

  static async open(file: DiskFile, ctx: OpenContext): Promise<Qcow2Disk> {
    const head = await file.read(0, Math.min(file.size, 4096))
    const h = parseQcow2Header(head, file.name, file.size)
    const cluster = 2 ** h.clusterBits
    // Extensions (and the backing file name) live in the first cluster.
    const first = cluster <= head.length ? head.subarray(0, cluster) : await file.read(0, Math.min(file.size, cluster))
    const ext = parseQcow2Extensions(first, h, file.name)
    const backingFormat = ext.backingFormat
    const regions: ContainerRegion[] = [{ file: 0, offset: 0, length: Math.max(ext.end, h.backingFileOffset ? h.backingFileOffset + h.backingFileSize : 0), structure: 'qcow2 header' }]
    let parent: VirtualDisk | null = null
    if (h.backingFileOffset) {
      const name = first.toString('utf8', h.backingFileOffset, h.backingFileOffset + h.backingFileSize)
      const p = ctx.resolveRelated(file.name, [name, name.split('/').pop() ?? ''], 'backing file', 'backing file name', h.backingFileOffset)
      parent = await ctx.openParent(p)
    }
    try {
      const disk = new Qcow2Disk(file, h, parent)
      disk.backingFormat = backingFormat
      const compressed = await disk.load(regions)
      if (compressed) disk.readOnlyReason = 'compressed clusters are mapped read-only'
      return disk
    } catch (e) {
      await parent?.close()
      throw e
    }
  }

  /** Reads L1, every L2 table (sorted, adjacent ones in one read), refcount and snapshot tables. Returns whether compressed clusters exist. */
  private async load(regions: ContainerRegion[]): Promise<boolean> {
    const h = this.header
    const file = this.file
    const cluster = this.cluster
    const l1buf = h.l1Size ? await file.read(h.l1TableOffset, h.l1Size * 8) : Buffer.alloc(0)
    regions.push({ file: 0, offset: h.l1TableOffset, length: h.l1Size * 8, structure: 'L1 table' })
    this.l1 = new Float64Array(h.l1Size)
    const l2s: [number, number][] = [] // [file offset, L1 index]
    for (let i = 0; i < h.l1Size; i++) {
      const off = this.l1Offset(l1buf.readBigUInt64BE(i * 8), i)
      this.l1[i] = off
      if (!off) continue
      // One L2 table named twice would map its entries twice (8,192 runs each time): corrupt, as qemu's refcounts say.
      const prev = this.l2Owner.get(off)
      if (prev !== undefined) {
        throw new CorruptError(`L1 entries ${prev} and ${i} both name the L2 table at ${off}`, { file: this.file.name, layer: 'qcow2', structure: 'L1 table', object: i, offset: h.l1TableOffset + i * 8 })
      }
      this.l2Owner.set(off, i)
      l2s.push([off, i])
    }
    l2s.sort((a, b) => a[0] - b[0])
    let compressed = false
    // Coalesce adjacent L2 tables into reads of up to 4 MiB; keep a few in flight (a cold cache is seek-bound).
    const groups: [number, number][] = []
    for (let k = 0; k < l2s.length; ) {
      let j = k + 1
      while (j < l2s.length && l2s[j][0] === l2s[j - 1][0] + cluster && (j - k + 1) * cluster <= 4 << 20) j++
      groups.push([k, j])
      k = j
    }
    let next = 0
    const worker = async () => {
      while (next < groups.length) {
        const [k, j] = groups[next++]
        const buf = await file.read(l2s[k][0], (j - k) * cluster)
        for (let t = k; t < j; t++) {
          const i = l2s[t][1]
          compressed = this.addL2(i, buf.subarray((t - k) * cluster, (t - k + 1) * cluster), 0, this.l2Entries) || compressed
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(4, groups.length) }, worker))
    this.table.finish()
    // Refcount table and blocks, snapshot table and snapshot L1 tables: meta-data, not needed to read.
    const rt = await file.read(h.refcountTableOffset, h.refcountTableClusters * cluster)
    regions.push({ file: 0, offset: h.refcountTableOffset, length: rt.length, structure: 'refcount table' })
    for (let i = 0; i < rt.length / 8; i++) {
      const off = Number(rt.readBigUInt64BE(i * 8) & OFFSET_MASK)
      if (off && off + cluster <= file.size) this.refcountBlocks.set(i, off)
    }
    if (h.nbSnapshots) await this.snapshots(regions)
    this.fixedRegions = regions
    this.rebuildRegions()
    return compressed
  }

  private l1Offset(entry: bigint, i: number): number {
    const at = { file: this.file.name, layer: 'qcow2', structure: 'L1 table', object: i, offset: this.header.l1TableOffset + i * 8 }
    if (entry & L1_RESERVED) throw new CorruptError(`expected reserved bits 0x${L1_RESERVED.toString(16)} clear, saw 0x${(entry & L1_RESERVED).toString(16)}`, at)
    const off = Number(entry & OFFSET_MASK)
    if (off && (off % this.cluster !== 0 || off + this.cluster > this.file.size)) {
      throw new CorruptError(`L1 entry ${i} points at ${off}, past the end of the ${this.file.size}-byte file or not cluster-aligned`, at)
    }
    const h = this.header
    const inL1 = off < h.l1TableOffset + h.l1Size * 8 && off + this.cluster > h.l1TableOffset
    const inRefcount = off < h.refcountTableOffset + h.refcountTableClusters * this.cluster && off + this.cluster > h.refcountTableOffset
    if (off && (inL1 || inRefcount)) throw new CorruptError(`L1 entry ${i} puts an L2 table at ${off}, inside the ${inL1 ? 'L1' : 'refcount'} table`, at)
    return off
  }

  /** Adds entries [from, to) of L2 table `l1Index` to the table (bulk load). Returns whether any is compressed. */
  private addL2(l1Index: number, buf: Buffer, from: number, to: number): boolean {
    let compressed = false
    // A 32-bit view to skip unallocated entries fast (most of a sparse image's).
    const words = buf.byteOffset % 4 === 0 ? new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2) : new Uint32Array(Uint8Array.from(buf).buffer)
    for (let e = from; e < to; e++) {
      if (words[2 * e] === 0 && words[2 * e + 1] === 0) continue
      const guest = (l1Index * this.l2Entries + e) * this.cluster
      if (guest >= this.size) break
      const m = this.entryMapping(buf.readBigUInt64BE(e * 8), l1Index, e)
      if (!m) continue
      if (m.kind === RunKind.Compressed) compressed = true
      this.table.add(guest, Math.min(this.cluster, this.size - guest), 0, m.fileOffset, m.kind, m.storedLength)
    }
    return compressed
  }

  private entryMapping(entry: bigint, l1Index: number, e: number): { kind: RunKind; fileOffset: number; storedLength: number } | null {
    const at = { file: this.file.name, layer: 'qcow2', structure: 'L2 table', object: `${l1Index}/${e}`, offset: this.l1[l1Index] + e * 8 }
    if (entry & L2_COMPRESSED) {
      const desc = entry & ((1n << 62n) - 1n)
      const off = Number(desc & this.coffsetMask)
      const sectors = Number((desc >> BigInt(this.csizeShift)) & this.csizeMask) + 1
      const stored = sectors * 512 - (off & 511)
      // The last compressed cluster's sector count may round past the end of the file, by less than a sector.
      if (off >= this.file.size || off + stored > this.file.size + 512) {
        throw new CorruptError(`compressed cluster at ${off} (+${stored} bytes) ${off >= this.file.size ? 'starts' : 'ends'} past the end of the ${this.file.size}-byte file`, at)
      }
      if (this.header.compressionType !== 0) {
        const name = this.header.compressionType === 1 ? 'zstd' : `type ${this.header.compressionType}`
        throw new UnsupportedError(`${name}-compressed clusters are not supported (only zlib)`, at)
      }
      return { kind: RunKind.Compressed, fileOffset: off, storedLength: Math.min(stored, this.file.size - off) }
    }
    const off = Number(entry & OFFSET_MASK)
    if (this.header.version >= 3 && entry & L2_ZERO) return { kind: RunKind.Zero, fileOffset: 0, storedLength: 0 }
    if (entry & L2_RESERVED) throw new CorruptError(`expected reserved bits 0x${L2_RESERVED.toString(16)} clear, saw 0x${(entry & L2_RESERVED).toString(16)}`, at)
    if (!off) return null
    if (off % this.cluster !== 0 || off + this.cluster > this.file.size) {
      throw new CorruptError(`L2 entry points at ${off}, past the end of the ${this.file.size}-byte file or not cluster-aligned`, at)
    }
    return { kind: RunKind.Data, fileOffset: off, storedLength: 0 }
  }

  private async snapshots(regions: ContainerRegion[]): Promise<void> {
    const h = this.header
    // Each entry: 40 fixed bytes, extra data, id, name, padded to 8; read in bounded pieces.
    let o = h.snapshotsOffset
    const start = o
    for (let n = 0; n < h.nbSnapshots; n++) {
      if (o + 40 > this.file.size) throw new CorruptError(`snapshot ${n} runs past the file`, { file: this.file.name, layer: 'qcow2', structure: 'snapshot table', offset: o })
      const e = await this.file.read(o, 40)
      const l1Off = Number(e.readBigUInt64BE(0))
      const l1Size = e.readUInt32BE(8)
      const idLen = e.readUInt16BE(12)
      const nameLen = e.readUInt16BE(14)
      const extra = e.readUInt32BE(36)
      if (l1Size * 8 <= MAX_L1_BYTES && l1Off && l1Off + l1Size * 8 <= this.file.size) {
        regions.push({ file: 0, offset: l1Off, length: l1Size * 8, structure: 'snapshot L1 table' })
      }
      o += Math.ceil((40 + extra + idLen + nameLen) / 8) * 8
    }
    regions.push({ file: 0, offset: start, length: o - start, structure: 'snapshot table' })
  }

  protected override async decompress(_file: number, fileOffset: number, storedLength: number): Promise<Buffer> {
    const raw = await this.file.read(fileOffset, Math.min(storedLength, this.file.size - fileOffset))
    const at = { file: this.file.name, layer: 'qcow2', structure: 'compressed cluster', offset: fileOffset }
    // Like qemu: the stream must yield a whole cluster; what follows it (sector padding) is ignored.
    let out: Buffer
    try {
      // Z_SYNC_FLUSH: a stream cut short yields what it has (checked below) rather than an opaque zlib error.
      out = zlib.inflateRawSync(raw, { finishFlush: zlib.constants.Z_SYNC_FLUSH, maxOutputLength: this.cluster })
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code
      const saw = code === 'ERR_BUFFER_TOO_LARGE' ? `more than ${this.cluster} bytes inflated` : (e as Error).message
      throw new CorruptError(`expected a raw-deflate stream of one ${this.cluster}-byte cluster, saw ${saw}`, at)
    }
    if (out.length !== this.cluster) throw new CorruptError(`expected ${this.cluster} bytes inflated, saw ${out.length}`, at)
    return out
  }

  override async applyWrite(file: number, fileOffset: number, bytes: Buffer): Promise<GuestRange[]> {
    if (file !== 0 || bytes.length === 0) return []
    const h = this.header
    const end = fileOffset + bytes.length
    const l1End = h.l1TableOffset + h.l1Size * 8
    const hitsL1 = fileOffset < l1End && end > h.l1TableOffset
    let hitsL2 = false
    for (let c = Math.floor(fileOffset / this.cluster) * this.cluster; c < end && !hitsL2; c += this.cluster) hitsL2 = this.l2Owner.has(c)
    const refEnd = h.refcountTableOffset + h.refcountTableClusters * this.cluster
    const hitsRefcount = fileOffset < refEnd && end > h.refcountTableOffset
    if (!hitsL1 && !hitsL2 && !hitsRefcount) return []
    const refcountChanged = hitsRefcount && (await this.refcountEntries(fileOffset, bytes))
    if (!hitsL1 && !hitsL2) {
      if (refcountChanged) this.rebuildRegions()
      return []
    }
    // Allocating writes grow the file: entries may point past the size seen at open.
    await this.file.refresh()
    const changed: GuestRange[] = []
    let regionsChanged = refcountChanged
    const span = this.l2Entries * this.cluster
    // L1 entries: a new (or dropped, or copied-on-write) L2 table. Its contents were written before the L1 entry.
    if (hitsL1) {
      const first = Math.floor((Math.max(fileOffset, h.l1TableOffset) - h.l1TableOffset) / 8)
      const last = Math.ceil((Math.min(end, l1End) - h.l1TableOffset) / 8)
      const entries = await this.entriesAfterWrite(h.l1TableOffset + first * 8, (last - first) * 8, fileOffset, bytes)
      for (let i = first; i < last; i++) {
        const at = h.l1TableOffset + i * 8
        // An entry only partly written here (the rest merged from the file) may be invalid until the rest arrives.
        const torn = at < fileOffset || at + 8 > end
        let off: number
        try {
          off = this.l1Offset(entries.readBigUInt64BE((i - first) * 8), i)
        } catch (e) {
          if (!torn) throw e
          off = 0
        }
        if (off === this.l1[i]) continue
        if (this.l1[i]) this.l2Owner.delete(this.l1[i])
        this.l1[i] = off
        const guest = i * span
        if (guest >= this.size) continue
        const len = Math.min(span, this.size - guest)
        this.table.remap(guest, len, null)
        if (off) {
          this.l2Owner.set(off, i)
          try {
            await this.remapEntries(i, await this.file.read(off, this.cluster), 0, this.l2Entries)
          } catch (e) {
            if (!torn) throw e
            // A torn L1 entry pointing at no L2 table yet: nothing mapped until its other bytes arrive.
            this.l2Owner.delete(off)
            this.l1[i] = 0
            this.table.remap(guest, len, null)
          }
        }
        regionsChanged = true
        changed.push({ offset: guest, length: len })
      }
    }
    // L2 entries of known tables.
    for (let c = Math.floor(fileOffset / this.cluster) * this.cluster; c < end; c += this.cluster) {
      const i = this.l2Owner.get(c)
      if (i === undefined) continue
      const from = Math.floor((Math.max(fileOffset, c) - c) / 8)
      const to = Math.ceil((Math.min(end, c + this.cluster) - c) / 8)
      const entries = await this.entriesAfterWrite(c + from * 8, (to - from) * 8, fileOffset, bytes)
      for (const r of await this.remapEntries(i, entries, from, to, fileOffset, end)) changed.push(r)
    }
    if (regionsChanged) this.rebuildRegions()
    return changed
  }

  /** A refcount table write: its blocks are container meta-data (no guest mapping changes). Returns whether the set changed. */
  private async refcountEntries(fileOffset: number, bytes: Buffer): Promise<boolean> {
    const h = this.header
    const refEnd = h.refcountTableOffset + h.refcountTableClusters * this.cluster
    const first = Math.floor((Math.max(fileOffset, h.refcountTableOffset) - h.refcountTableOffset) / 8)
    const last = Math.ceil((Math.min(fileOffset + bytes.length, refEnd) - h.refcountTableOffset) / 8)
    const entries = await this.entriesAfterWrite(h.refcountTableOffset + first * 8, (last - first) * 8, fileOffset, bytes)
    let changed = false
    for (let i = first; i < last; i++) {
      const off = Number(entries.readBigUInt64BE((i - first) * 8) & OFFSET_MASK)
      const valid = off !== 0 && off % this.cluster === 0
      if ((this.refcountBlocks.get(i) ?? 0) === (valid ? off : 0)) continue
      if (valid) this.refcountBlocks.set(i, off)
      else this.refcountBlocks.delete(i)
      changed = true
    }
    return changed
  }

  private rebuildRegions(): void {
    const list = this.fixedRegions.slice()
    for (const off of this.l2Owner.keys()) list.push({ file: 0, offset: off, length: this.cluster, structure: 'L2 table' })
    for (const off of this.refcountBlocks.values()) list.push({ file: 0, offset: off, length: this.cluster, structure: 'refcount block' })
    this.setRegions(list)
  }

  /**
   * The table bytes [at, at + length) as they are once `bytes` lands at `fileOffset`: the written
   * bytes where they reach, the file's elsewhere (an entry only partly written keeps its other bytes).
   */
  private async entriesAfterWrite(at: number, length: number, fileOffset: number, bytes: Buffer): Promise<Buffer> {
    const covered = fileOffset <= at && fileOffset + bytes.length >= at + length
    const out = covered ? Buffer.alloc(length) : Buffer.from(await this.file.read(at, length))
    const from = Math.max(at, fileOffset)
    const to = Math.min(at + length, fileOffset + bytes.length)
    bytes.copy(out, from - at, from - fileOffset, to - fileOffset)
    return out
  }

  /**
   * Re-parses L2 entries [from, to) of table `l1Index`; `buf` holds them starting with entry `from`.
   * Entries only partly inside the written range [wFrom, wTo) that do not parse yet map nothing until the rest arrives.
   */
  private async remapEntries(l1Index: number, buf: Buffer, from: number, to: number, wFrom = -Infinity, wTo = Infinity): Promise<GuestRange[]> {
    const out: GuestRange[] = []
    // A changed entry of a fragmented table costs time in proportion to the table (the run
    // arrays shift): a whole L2 table of changes yields to the event loop every few ms, so
    // other images' I/O goes on while this image's write waits for its map.
    let slice = performance.now()
    for (let e = from; e < to; e++) {
      if (performance.now() - slice > YIELD_MS) {
        await new Promise((r) => setImmediate(r))
        slice = performance.now()
      }
      const guest = (l1Index * this.l2Entries + e) * this.cluster
      if (guest >= this.size) break
      const len = Math.min(this.cluster, this.size - guest)
      const at = this.l1[l1Index] + e * 8
      let m: ReturnType<Qcow2Disk['entryMapping']>
      try {
        m = this.entryMapping(buf.readBigUInt64BE((e - from) * 8), l1Index, e)
      } catch (err) {
        if (at >= wFrom && at + 8 <= wTo) throw err
        m = null
      }
      const mapping = m ? { file: 0, fileOffset: m.fileOffset, kind: m.kind, storedLength: m.storedLength } : null
      // qemu rewrites whole L2 tables: an unchanged entry costs a lookup (a remap shifts the whole table).
      if (this.table.matches(guest, len, mapping)) continue
      const before = this.mapGuest(guest)
      this.table.remap(guest, len, mapping)
      if (m?.kind === RunKind.Compressed && !this.readOnlyReason) this.readOnlyReason = 'compressed clusters are mapped read-only'
      const after = this.mapGuest(guest)
      if (before.kind !== after.kind || mappingKey(before) !== mappingKey(after)) out.push({ offset: guest, length: len })
    }
    return out
  }
}

/** Longest stretch of table updates between yields to the event loop (ms). */
const YIELD_MS = 5

function mappingKey(m: GuestMapping): string {
  return m.kind === 'data' ? `d${m.file}:${m.fileOffset}` : m.kind === 'compressed' ? `c${m.file}:${m.fileOffset}:${m.storedLength}:${m.grainOffset}` : m.kind
}

export { QCOW2_MAGIC, parseQcow2Header, type Qcow2Header } from './qcow2-header'

export const qcow2Format: ContainerModule = {
  format: 'qcow2',
  probe: async (head) => head.length >= 4 && head.readUInt32BE(0) === QCOW2_MAGIC,
  open: (file, ctx) => Qcow2Disk.open(file, ctx),
}
