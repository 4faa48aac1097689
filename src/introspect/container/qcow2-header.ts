// The qcow2 header (qemu docs/interop/qcow2.txt, "Header") and its header
// extensions. Raw fields keep the spec's names at their literal offsets; the
// parsed header has plain names. Validation order: length, magic, version,
// bounded fields, derived arithmetic (tables inside the file).

import { CorruptError, NotThisFormatError, toSafeNumber, UnsupportedError } from '../errors'

export const QCOW2_MAGIC = 0x514649fb
/** Version 2 headers end here; version 3 headers are at least V3_HEADER bytes. */
export const V2_HEADER = 72
export const V3_HEADER = 104
const EXT_END = 0x00000000
const EXT_BACKING_FORMAT = 0xe2792aca
const EXT_FEATURE_NAMES = 0x6803f857
const EXT_DATA_FILE = 0x44415441
/** At most this many header extensions are walked (qemu writes four or five). */
const MAX_EXTENSIONS = 64

export const INCOMPAT_DIRTY = 1n << 0n
export const INCOMPAT_CORRUPT = 1n << 1n
export const INCOMPAT_DATA_FILE = 1n << 2n
export const INCOMPAT_COMPRESSION = 1n << 3n
export const INCOMPAT_EXTL2 = 1n << 4n
const KNOWN_INCOMPAT = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2

/** Largest L1 table we accept (qemu's own QCOW_MAX_L1_SIZE is 32 MiB). */
export const MAX_L1_BYTES = 32 << 20
/** Largest refcount table we accept (qemu's QCOW_MAX_REFTABLE_SIZE is 8 MiB). */
export const MAX_REFTABLE_BYTES = 8 << 20
export const MAX_SNAPSHOTS = 65536

/** The header as stored: spec names, big-endian, at literal offsets. */
interface RawQcow2Header {
  magic: number // 0
  version: number // 4
  backing_file_offset: bigint // 8
  backing_file_size: number // 16
  cluster_bits: number // 20
  size: bigint // 24
  crypt_method: number // 32
  l1_size: number // 36
  l1_table_offset: bigint // 40
  refcount_table_offset: bigint // 48
  refcount_table_clusters: number // 56
  nb_snapshots: number // 60
  snapshots_offset: bigint // 64
  // Version 3 only (version 2: all zero, header_length 72).
  incompatible_features: bigint // 72
  compatible_features: bigint // 80
  autoclear_features: bigint // 88
  refcount_order: number // 96
  header_length: number // 100
  compression_type: number // 104, present when header_length > 104
}

function readRaw(b: Buffer): RawQcow2Header {
  const v3 = b.readUInt32BE(4) >= 3 && b.length >= V3_HEADER
  const headerLength = v3 ? b.readUInt32BE(100) : V2_HEADER
  return {
    magic: b.readUInt32BE(0),
    version: b.readUInt32BE(4),
    backing_file_offset: b.readBigUInt64BE(8),
    backing_file_size: b.readUInt32BE(16),
    cluster_bits: b.readUInt32BE(20),
    size: b.readBigUInt64BE(24),
    crypt_method: b.readUInt32BE(32),
    l1_size: b.readUInt32BE(36),
    l1_table_offset: b.readBigUInt64BE(40),
    refcount_table_offset: b.readBigUInt64BE(48),
    refcount_table_clusters: b.readUInt32BE(56),
    nb_snapshots: b.readUInt32BE(60),
    snapshots_offset: b.readBigUInt64BE(64),
    incompatible_features: v3 ? b.readBigUInt64BE(72) : 0n,
    compatible_features: v3 ? b.readBigUInt64BE(80) : 0n,
    autoclear_features: v3 ? b.readBigUInt64BE(88) : 0n,
    refcount_order: v3 ? b.readUInt32BE(96) : 4,
    header_length: headerLength,
    compression_type: v3 && headerLength > 104 && b.length > 104 ? b.readUInt8(104) : 0,
  }
}

export interface Qcow2Header {
  readonly version: 2 | 3
  /** Byte offset and length of the backing file name (0 when there is no backing file). */
  readonly backingFileOffset: number
  readonly backingFileSize: number
  readonly clusterBits: number
  /** Cluster size in bytes. */
  readonly clusterSize: number
  /** Virtual disk size in bytes. */
  readonly size: number
  readonly cryptMethod: number
  /** L1 entries (each maps clusterSize² / 8 guest bytes). */
  readonly l1Size: number
  readonly l1TableOffset: number
  readonly refcountTableOffset: number
  readonly refcountTableClusters: number
  readonly nbSnapshots: number
  readonly snapshotsOffset: number
  readonly incompatible: bigint
  /** Bytes of the fixed header; extensions follow. */
  readonly headerLength: number
  /** 0 zlib, 1 zstd. */
  readonly compressionType: number
}

/** Parses and bounds the fixed header. `b` holds at least the file's first 4 KiB (or all of a smaller file). */
export function parseQcow2Header(b: Buffer, file: string, fileSize: number): Qcow2Header {
  const ctx = { file, layer: 'qcow2', structure: 'qcow2 header', offset: 0 }
  const at = (offset: number) => ({ ...ctx, offset })
  if (b.length < V2_HEADER) throw new NotThisFormatError(`expected at least ${V2_HEADER} header bytes, saw ${b.length}`, ctx)
  const r = readRaw(b)
  if (r.magic !== QCOW2_MAGIC) throw new NotThisFormatError(`expected magic QFI\\xfb, saw 0x${r.magic.toString(16)}`, ctx)
  if (r.version !== 2 && r.version !== 3) throw new UnsupportedError(`version ${r.version} (only 2 and 3 exist)`, at(4))
  if (r.cluster_bits < 9 || r.cluster_bits > 21) throw new CorruptError(`cluster_bits ${r.cluster_bits} is outside 9..21`, at(20))
  const cluster = 2 ** r.cluster_bits
  const minHeader = r.version === 3 ? V3_HEADER : V2_HEADER
  if (r.header_length < minHeader || r.header_length > cluster) throw new CorruptError(`header_length ${r.header_length} is outside ${minHeader}..${cluster} (cluster size)`, at(100))
  if (r.crypt_method !== 0) throw new UnsupportedError(`encrypted images are not supported (crypt_method ${r.crypt_method})`, at(32))
  if (r.incompatible_features & INCOMPAT_DATA_FILE) throw new UnsupportedError('external data files are not supported', at(72))
  if (r.incompatible_features & INCOMPAT_EXTL2) throw new UnsupportedError('extended L2 entries (subclusters) are not supported', at(72))
  if (r.compression_type !== 0 && !(r.incompatible_features & INCOMPAT_COMPRESSION)) {
    throw new CorruptError(`compression_type ${r.compression_type} without the compression-type feature bit`, at(104))
  }
  const h: Qcow2Header = {
    version: r.version,
    backingFileOffset: toSafeNumber(r.backing_file_offset, 'backing_file_offset', at(8)),
    backingFileSize: r.backing_file_size,
    clusterBits: r.cluster_bits,
    clusterSize: cluster,
    size: toSafeNumber(r.size, 'size', at(24)),
    cryptMethod: r.crypt_method,
    l1Size: r.l1_size,
    l1TableOffset: toSafeNumber(r.l1_table_offset, 'l1_table_offset', at(40)),
    refcountTableOffset: toSafeNumber(r.refcount_table_offset, 'refcount_table_offset', at(48)),
    refcountTableClusters: r.refcount_table_clusters,
    nbSnapshots: r.nb_snapshots,
    snapshotsOffset: toSafeNumber(r.snapshots_offset, 'snapshots_offset', at(64)),
    incompatible: r.incompatible_features,
    headerLength: r.header_length,
    compressionType: r.compression_type,
  }
  // Derived: the L1 table must cover the disk, and every table lies cluster-aligned inside the file, after the header cluster.
  const needL1 = Math.ceil(h.size / (cluster * (cluster / 8)))
  if (h.l1Size < needL1) throw new CorruptError(`l1_size ${h.l1Size} cannot map ${h.size} bytes (needs ${needL1})`, at(36))
  if (h.l1Size * 8 > MAX_L1_BYTES) throw new CorruptError(`l1_size ${h.l1Size} is over the ${MAX_L1_BYTES}-byte limit`, at(36))
  const inFile = (off: number, len: number, what: string, field: number) => {
    if (off % cluster !== 0 || off < cluster || off + len > fileSize) {
      throw new CorruptError(`${what} at ${off} (+${len}) is not a cluster-aligned range inside the ${fileSize}-byte file`, at(field))
    }
  }
  if (h.l1Size > 0) inFile(h.l1TableOffset, h.l1Size * 8, 'L1 table', 40)
  if (h.refcountTableClusters * cluster > MAX_REFTABLE_BYTES) {
    throw new CorruptError(`refcount_table_clusters ${h.refcountTableClusters} is over the ${MAX_REFTABLE_BYTES}-byte limit`, at(56))
  }
  inFile(h.refcountTableOffset, h.refcountTableClusters * cluster, 'refcount table', 48)
  if (h.nbSnapshots > MAX_SNAPSHOTS) throw new CorruptError(`${h.nbSnapshots} snapshots (at most ${MAX_SNAPSHOTS})`, at(60))
  if (h.nbSnapshots > 0) inFile(h.snapshotsOffset, 40, 'snapshot table', 64)
  if (h.backingFileOffset && (h.backingFileSize === 0 || h.backingFileSize > 1023 || h.backingFileOffset + h.backingFileSize > Math.min(cluster, fileSize))) {
    throw new CorruptError(`backing file name at ${h.backingFileOffset} (+${h.backingFileSize}) is outside the first cluster`, at(8))
  }
  return Object.freeze(h)
}

export interface Qcow2Extensions {
  /** End of the extension area (after the end marker). */
  readonly end: number
  /** The backing file format the backing-format extension names, '' without one. */
  readonly backingFormat: string
}

/**
 * Walks the header extensions in the first cluster `first`: refuses an external
 * data file, and names unknown incompatible feature bits from the feature-name table.
 */
export function parseQcow2Extensions(first: Buffer, h: Qcow2Header, file: string): Qcow2Extensions {
  const featureNames = new Map<number, string>() // incompatible feature bit → name
  let backingFormat = ''
  let o = h.headerLength
  // Version 2 images carry extensions too (qemu writes the backing format there), right after the 72 bytes.
  for (let n = 0; n < MAX_EXTENSIONS && o + 8 <= first.length; n++) {
    const type = first.readUInt32BE(o)
    const len = first.readUInt32BE(o + 4)
    const at = { file, layer: 'qcow2', structure: 'qcow2 header', object: `extension 0x${type.toString(16)}`, offset: o }
    if (type === EXT_END) {
      o += 8
      break
    }
    if (o + 8 + len > first.length) throw new CorruptError(`expected header extension of ${len} bytes to end inside the first cluster (${first.length} bytes), saw it end at ${o + 8 + len}`, at)
    if (type === EXT_DATA_FILE) throw new UnsupportedError('external data files are not supported', at)
    if (type === EXT_BACKING_FORMAT) backingFormat = first.toString('latin1', o + 8, o + 8 + len)
    if (type === EXT_FEATURE_NAMES) {
      // 48-byte entries: type (0 incompatible), bit number, 46-byte NUL-padded name.
      for (let f = o + 8; f + 48 <= o + 8 + len; f += 48) {
        if (first[f] === 0) featureNames.set(first[f + 1], first.toString('latin1', f + 2, f + 48).replace(/\0.*$/s, ''))
      }
    }
    o += 8 + Math.ceil(len / 8) * 8
  }
  const unknown = h.incompatible & ~KNOWN_INCOMPAT
  if (unknown) {
    const bits: string[] = []
    for (let bit = 0; bit < 64; bit++) if (unknown & (1n << BigInt(bit))) bits.push(featureNames.has(bit) ? `${bit} (${featureNames.get(bit)})` : `${bit}`)
    throw new UnsupportedError(`unknown incompatible feature bits ${bits.join(', ')}`, { file, layer: 'qcow2', structure: 'qcow2 header', offset: 72 })
  }
  return Object.freeze({ end: o, backingFormat })
}
