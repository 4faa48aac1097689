// VDI (VirtualBox; layout as in VirtualBox's VDICore.h and qemu's
// block/vdi.c): a header, a block map of u32 entries, fixed-size blocks.
// Static images have every block allocated; dynamic ones allocate on write.
// Little-endian.

import { CorruptError, NotThisFormatError, UnsupportedError } from '../errors'
import { MappedDisk, type DiskFile } from './disk'
import { RunKind } from './guest-table'
import type { ContainerModule } from './open'
import type { GuestRange } from './types'

export const VDI_SIGNATURE = 0xbeda107f
const HEADER_AT = 0
const UNALLOCATED = 0xffffffff
const DISCARDED = 0xfffffffe
const TYPE_DYNAMIC = 1
const TYPE_STATIC = 2
/** Most blocks we map (qemu's own VDI_BLOCKS_IN_IMAGE_MAX is in this range). */
const MAX_BLOCKS = 0x3fffffff / 4

export interface VdiHeader {
  version: number
  headerSize: number
  imageType: number
  offBlocks: number
  offData: number
  diskSize: number
  blockSize: number
  blockExtra: number
  blocks: number
  blocksAllocated: number
}

export function parseVdiHeader(b: Buffer, file: string, fileSize: number): VdiHeader {
  const ctx = { file, layer: 'vdi', structure: 'vdi header', offset: HEADER_AT }
  if (b.length < 0x190) throw new NotThisFormatError(`expected a 400-byte header, saw ${b.length}`, ctx)
  if (b.readUInt32LE(0x40) !== VDI_SIGNATURE) throw new NotThisFormatError(`expected signature 0xbeda107f, saw 0x${b.readUInt32LE(0x40).toString(16)}`, { ...ctx, offset: 0x40 })
  const h: VdiHeader = {
    version: b.readUInt32LE(0x44),
    headerSize: b.readUInt32LE(0x48),
    imageType: b.readUInt32LE(0x4c),
    offBlocks: b.readUInt32LE(0x154),
    offData: b.readUInt32LE(0x158),
    diskSize: Number(b.readBigUInt64LE(0x170)),
    blockSize: b.readUInt32LE(0x178),
    blockExtra: b.readUInt32LE(0x17c),
    blocks: b.readUInt32LE(0x180),
    blocksAllocated: b.readUInt32LE(0x184),
  }
  if (h.version >>> 16 !== 1) throw new UnsupportedError(`version ${h.version >>> 16}.${h.version & 0xffff} (1.x is supported)`, { ...ctx, offset: 0x44 })
  if (h.imageType !== TYPE_DYNAMIC && h.imageType !== TYPE_STATIC) throw new UnsupportedError(`image type ${h.imageType} (1 dynamic, 2 static)`, { ...ctx, offset: 0x4c })
  if (h.blockSize < 512 || (h.blockSize & (h.blockSize - 1)) !== 0 || h.blockSize > 256 << 20) throw new CorruptError(`block size ${h.blockSize} is not a power of two in 512..256 MiB`, { ...ctx, offset: 0x178 })
  if (h.blockExtra !== 0) throw new UnsupportedError(`block extra data of ${h.blockExtra} bytes`, { ...ctx, offset: 0x17c })
  if (h.blocks > MAX_BLOCKS) throw new CorruptError(`${h.blocks} blocks (at most ${MAX_BLOCKS})`, { ...ctx, offset: 0x180 })
  if (!Number.isSafeInteger(h.diskSize) || h.blocks * h.blockSize < h.diskSize) {
    throw new CorruptError(`${h.blocks} blocks of ${h.blockSize} bytes cannot hold a ${h.diskSize}-byte disk`, { ...ctx, offset: 0x180 })
  }
  if (h.blocksAllocated > h.blocks) throw new CorruptError(`${h.blocksAllocated} allocated blocks of ${h.blocks}`, { ...ctx, offset: 0x184 })
  if (h.offBlocks < 0x190 || h.offBlocks + h.blocks * 4 > fileSize) throw new CorruptError(`block map of ${h.blocks} entries at ${h.offBlocks} does not fit the ${fileSize}-byte file`, { ...ctx, offset: 0x154 })
  if (h.offData < h.offBlocks + h.blocks * 4) throw new CorruptError(`data at ${h.offData} overlaps the block map`, { ...ctx, offset: 0x158 })
  return Object.freeze(h)
}

export class VdiDisk extends MappedDisk {
  private readonly h: VdiHeader
  private readonly map: Uint32Array

  private constructor(file: DiskFile, h: VdiHeader) {
    super({ format: 'vdi', subformat: h.imageType === TYPE_STATIC ? 'static' : 'dynamic', size: h.diskSize, files: [file], mapTables: 'the VDI block map' })
    this.h = h
    this.map = new Uint32Array(h.blocks)
  }

  static async open(file: DiskFile): Promise<VdiDisk> {
    const h = parseVdiHeader(await file.read(0, Math.min(file.size, 512)), file.name, file.size)
    const d = new VdiDisk(file, h)
    // Blocks already named: a map naming one block twice (a map that is a hole names block 0 everywhere) is corrupt.
    const named = new Uint8Array(Math.ceil(h.blocks / 8))
    const CHUNK = 1 << 20 // entries per read (4 MiB)
    for (let first = 0; first < h.blocks; first += CHUNK) {
      const count = Math.min(CHUNK, h.blocks - first)
      const raw = await file.read(h.offBlocks + first * 4, count * 4)
      for (let k = 0; k < count; k++) {
        const i = first + k
        const e = raw.readUInt32LE(k * 4)
        d.map[i] = e
        if (e < h.blocks && i * h.blockSize < h.diskSize) {
          if (named[e >>> 3] & (1 << (e & 7))) {
            throw new CorruptError(`entry ${i} names block ${e}, which an earlier entry names too`, { file: file.name, layer: 'vdi', structure: 'vdi block map', object: i, offset: h.offBlocks + i * 4 })
          }
          named[e >>> 3] |= 1 << (e & 7)
        }
        d.mapBlock(i, true)
      }
    }
    d.table.finish()
    d.setRegions([
      { file: 0, offset: 0, length: Math.min(h.offBlocks, 512), structure: 'vdi header' },
      { file: 0, offset: h.offBlocks, length: Math.ceil((h.blocks * 4) / 512) * 512, structure: 'vdi block map' },
    ])
    return d
  }

  private mapBlock(i: number, bulk: boolean): void {
    const h = this.h
    const guest = i * h.blockSize
    if (guest >= this.size) return
    const len = Math.min(h.blockSize, this.size - guest)
    const e = this.map[i]
    if (e === UNALLOCATED || e === DISCARDED) {
      if (!bulk) this.table.remap(guest, len, null)
      return
    }
    const f = this.fileReaders[0]
    const off = h.offData + e * h.blockSize
    if (e >= h.blocks || off + len > f.size) {
      throw new CorruptError(`entry ${i} names block ${e}, ${e >= h.blocks ? `beyond the image's ${h.blocks}` : 'past the end of the file'}`, {
        file: f.name,
        layer: 'vdi',
        structure: 'vdi block map',
        object: i,
        offset: h.offBlocks + i * 4,
      })
    }
    if (bulk) this.table.add(guest, len, 0, off, RunKind.Data)
    else this.table.remap(guest, len, { file: 0, fileOffset: off, kind: RunKind.Data })
  }

  override async applyWrite(file: number, fileOffset: number, bytes: Buffer): Promise<GuestRange[]> {
    const h = this.h
    if (file !== 0) return []
    await this.fileReaders[0].refresh()
    const out: GuestRange[] = []
    const first = Math.max(0, Math.ceil((fileOffset - h.offBlocks) / 4))
    // A changed entry of a fragmented map costs time in proportion to it (the run arrays shift):
    // a live update yields to the event loop every few ms, so other images' I/O goes on.
    let slice = performance.now()
    for (let i = first; i < h.blocks; i++) {
      if (performance.now() - slice > YIELD_MS) {
        await new Promise((r) => setImmediate(r))
        slice = performance.now()
      }
      const at = h.offBlocks + i * 4
      if (at + 4 > fileOffset + bytes.length) break
      const e = bytes.readUInt32LE(at - fileOffset)
      if (e === this.map[i]) continue
      this.map[i] = e
      this.mapBlock(i, false)
      out.push({ offset: i * h.blockSize, length: Math.min(h.blockSize, this.size - i * h.blockSize) })
    }
    return out
  }
}

/** Longest stretch of live table updates between yields to the event loop (ms). */
const YIELD_MS = 5

export const vdiFormat: ContainerModule = {
  format: 'vdi',
  probe: async (head) => head.length >= 0x44 && head.readUInt32LE(0x40) === VDI_SIGNATURE,
  open: (file) => VdiDisk.open(file),
}
