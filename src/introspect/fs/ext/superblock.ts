// The ext2/3/4 superblock (ext2_fs.h `struct ext2_super_block`, at byte 1024
// of the volume) and the static layout it implies: where every group's
// superblock backup, descriptor blocks, reserved GDT blocks live.

import { CorruptError, NotThisFormatError, UnsupportedError } from '../../errors'

export const SUPERBLOCK_OFFSET = 1024
export const SUPERBLOCK_SIZE = 1024
export const EXT_MAGIC = 0xef53

// Feature bits (e2fsprogs names).
export const COMPAT = { dir_prealloc: 0x1, imagic_inodes: 0x2, has_journal: 0x4, ext_attr: 0x8, resize_inode: 0x10, dir_index: 0x20, lazy_bg: 0x40, exclude_inode: 0x80, snapshot_bitmap: 0x100, sparse_super2: 0x200, fast_commit: 0x400, stable_inodes: 0x800, orphan_file: 0x1000 } as const
export const INCOMPAT = { compression: 0x1, filetype: 0x2, needs_recovery: 0x4, journal_dev: 0x8, meta_bg: 0x10, extent: 0x40, '64bit': 0x80, mmp: 0x100, flex_bg: 0x200, ea_inode: 0x400, dirdata: 0x1000, metadata_csum_seed: 0x2000, large_dir: 0x4000, inline_data: 0x8000, encrypt: 0x10000, casefold: 0x20000 } as const
export const RO_COMPAT = { sparse_super: 0x1, large_file: 0x2, btree_dir: 0x4, huge_file: 0x8, uninit_bg: 0x10, dir_nlink: 0x20, extra_isize: 0x40, snapshot: 0x80, quota: 0x100, bigalloc: 0x200, metadata_csum: 0x400, replica: 0x800, 'read-only': 0x1000, project: 0x2000, shared_blocks: 0x4000, verity: 0x8000, orphan_present: 0x10000 } as const

export interface Superblock {
  inodesCount: number
  blocksCount: number
  firstDataBlock: number
  blockSize: number
  blocksPerGroup: number
  inodesPerGroup: number
  inodeSize: number
  firstIno: number
  revLevel: number
  compat: number
  incompat: number
  roCompat: number
  uuid: string
  label: string
  reservedGdtBlocks: number
  journalInum: number
  journalDev: number
  journalUuid: string
  descSize: number
  firstMetaBg: number
  mmpBlock: number
  backupBgs: [number, number]
  quotaInums: number[]
  orphanFileInum: number
  groupCount: number
}

export function featureNames(sb: Superblock): string[] {
  const out: string[] = []
  for (const [set, bits] of [
    [sb.compat, COMPAT],
    [sb.incompat, INCOMPAT],
    [sb.roCompat, RO_COMPAT],
  ] as const) {
    for (const [name, bit] of Object.entries(bits)) if (set & bit) out.push(name)
  }
  return out
}

function uuidAt(b: Buffer, o: number): string {
  const h = b.subarray(o, o + 16).toString('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}

/** Parses the 1024 superblock bytes; `size` is the volume size in bytes (blocks must fit). */
export function parseSuperblock(b: Buffer, size: number, file: string): Superblock {
  const ctx = { file, layer: 'ext4', structure: 'superblock', offset: SUPERBLOCK_OFFSET }
  if (b.length < SUPERBLOCK_SIZE) throw new NotThisFormatError(`expected ${SUPERBLOCK_SIZE} superblock bytes, saw ${b.length}`, ctx)
  const magic = b.readUInt16LE(0x38)
  if (magic !== EXT_MAGIC) throw new NotThisFormatError(`expected magic 0xef53, saw 0x${magic.toString(16)}`, ctx)
  const logBlock = b.readUInt32LE(0x18)
  if (logBlock > 6) throw new CorruptError(`s_log_block_size ${logBlock} gives blocks over 64 KiB`, ctx)
  const blockSize = 1024 << logBlock
  const revLevel = b.readUInt32LE(0x4c)
  const compat = b.readUInt32LE(0x5c)
  const incompat = b.readUInt32LE(0x60)
  const roCompat = b.readUInt32LE(0x64)
  const is64 = (incompat & INCOMPAT['64bit']) !== 0
  const blocksCount = b.readUInt32LE(0x4) + (is64 ? b.readUInt32LE(0x150) * 2 ** 32 : 0)
  const sb: Superblock = {
    inodesCount: b.readUInt32LE(0x0),
    blocksCount,
    firstDataBlock: b.readUInt32LE(0x14),
    blockSize,
    blocksPerGroup: b.readUInt32LE(0x20),
    inodesPerGroup: b.readUInt32LE(0x28),
    inodeSize: revLevel === 0 ? 128 : b.readUInt16LE(0x58),
    firstIno: revLevel === 0 ? 11 : b.readUInt32LE(0x54),
    revLevel,
    compat,
    incompat,
    roCompat,
    uuid: uuidAt(b, 0x68),
    label: b.toString('latin1', 0x78, 0x88).replace(/\0.*$/s, ''),
    reservedGdtBlocks: b.readUInt16LE(0xce),
    journalUuid: uuidAt(b, 0xd0),
    journalInum: b.readUInt32LE(0xe0),
    journalDev: b.readUInt32LE(0xe4),
    descSize: is64 ? b.readUInt16LE(0xfe) : 32,
    firstMetaBg: b.readUInt32LE(0x104),
    mmpBlock: Number(b.readBigUInt64LE(0x168)),
    backupBgs: [b.readUInt32LE(0x24c), b.readUInt32LE(0x250)],
    quotaInums: [b.readUInt32LE(0x240), b.readUInt32LE(0x244), b.readUInt32LE(0x26c)],
    orphanFileInum: compat & COMPAT.orphan_file ? b.readUInt32LE(0x280) : 0, // s_orphan_file_inum
    groupCount: 0,
  }
  // Bounded fields, then derived arithmetic (STYLE.md habit 2).
  if (incompat & INCOMPAT.journal_dev) throw new UnsupportedError('this is an external journal device, not a file system', ctx)
  if (roCompat & RO_COMPAT.bigalloc) throw new UnsupportedError('bigalloc (cluster allocation) is not supported: the image is served as plain data', ctx)
  if (sb.blocksPerGroup === 0 || sb.blocksPerGroup > blockSize * 8) throw new CorruptError(`s_blocks_per_group ${sb.blocksPerGroup} is outside 1..${blockSize * 8}`, ctx)
  if (sb.inodesPerGroup === 0 || sb.inodesPerGroup > blockSize * 8) throw new CorruptError(`s_inodes_per_group ${sb.inodesPerGroup} is outside 1..${blockSize * 8}`, ctx)
  if (sb.inodeSize < 128 || sb.inodeSize > blockSize || (sb.inodeSize & (sb.inodeSize - 1)) !== 0) throw new CorruptError(`s_inode_size ${sb.inodeSize} is not a power of two in 128..${blockSize}`, ctx)
  if (is64 && (sb.descSize < 32 || sb.descSize > 1024 || (sb.descSize & (sb.descSize - 1)) !== 0)) throw new CorruptError(`s_desc_size ${sb.descSize} is not a power of two in 32..1024`, ctx)
  if (sb.firstDataBlock !== (blockSize === 1024 ? 1 : 0) && sb.firstDataBlock !== 0) throw new CorruptError(`s_first_data_block ${sb.firstDataBlock} does not fit ${blockSize}-byte blocks`, ctx)
  if (sb.blocksCount <= sb.firstDataBlock) throw new CorruptError(`s_blocks_count ${sb.blocksCount} leaves no room after the first data block`, ctx)
  if (sb.blocksCount * blockSize > size) {
    throw new CorruptError(`s_blocks_count ${sb.blocksCount} x ${blockSize} bytes exceeds the ${size}-byte volume`, ctx)
  }
  sb.groupCount = Math.ceil((sb.blocksCount - sb.firstDataBlock) / sb.blocksPerGroup)
  if (sb.inodesCount !== sb.groupCount * sb.inodesPerGroup) {
    throw new CorruptError(`s_inodes_count ${sb.inodesCount} is not ${sb.groupCount} groups x ${sb.inodesPerGroup}`, ctx)
  }
  // Every group's inode table lies inside the file system, each its own: together they fit in it.
  const itableBlocks = Math.ceil((sb.inodesPerGroup * sb.inodeSize) / blockSize)
  if (sb.groupCount * itableBlocks > sb.blocksCount) {
    throw new CorruptError(`${sb.groupCount} inode tables of ${itableBlocks} blocks (s_inodes_per_group ${sb.inodesPerGroup} x ${sb.inodeSize} bytes) exceed the ${sb.blocksCount}-block file system`, ctx)
  }
  if (sb.firstIno < 11 || sb.firstIno > sb.inodesCount) throw new CorruptError(`s_first_ino ${sb.firstIno} is out of range`, ctx)
  return Object.freeze(sb)
}

function isPowerOf(n: number, base: number): boolean {
  while (n > 1 && n % base === 0) n /= base
  return n === 1
}

/** Does group g carry a superblock backup (and, outside meta_bg, a GDT copy)? */
export function groupHasSuper(sb: Superblock, g: number): boolean {
  if (g === 0) return true
  if (sb.compat & COMPAT.sparse_super2) return g === sb.backupBgs[0] || g === sb.backupBgs[1]
  if (g <= 1 || !(sb.roCompat & RO_COMPAT.sparse_super)) return true
  if (!(g & 1)) return false
  return isPowerOf(g, 3) || isPowerOf(g, 5) || isPowerOf(g, 7)
}

export function groupFirstBlock(sb: Superblock, g: number): number {
  return sb.firstDataBlock + g * sb.blocksPerGroup
}

/** Number of blocks the whole descriptor table takes. */
export function gdtBlocks(sb: Superblock): number {
  return Math.ceil((sb.groupCount * sb.descSize) / sb.blockSize)
}

export interface StaticRun {
  start: number
  count: number
  kind: 'superblock' | 'gdt' | 'reserved-gdt'
}

/**
 * Superblock copies, descriptor blocks and reserved GDT blocks of every group
 * (ext2fs_super_and_bgd_loc2 in e2fsprogs). With meta_bg, descriptor block k
 * of meta group m lives in the first, second and last group of m.
 */
export function staticLayout(sb: Superblock): StaticRun[] {
  const out: StaticRun[] = []
  const perBlock = sb.blockSize / sb.descSize
  const metaBg = (sb.incompat & INCOMPAT.meta_bg) !== 0
  const oldGdt = metaBg ? Math.min(sb.firstMetaBg, gdtBlocks(sb)) : gdtBlocks(sb)
  for (let g = 0; g < sb.groupCount; g++) {
    const first = groupFirstBlock(sb, g)
    let next = first
    const hasSuper = groupHasSuper(sb, g)
    // Groups of meta groups past s_first_meta_bg carry no copy of the classic table (nor reserved GDT).
    const classic = !metaBg || Math.floor(g / perBlock) < sb.firstMetaBg
    if (hasSuper) {
      // With 1 KiB blocks and first_data_block 1 the superblock is its group's first block; with
      // larger blocks group 0's superblock sits inside block 0 at byte 1024.
      out.push({ start: first, count: 1, kind: 'superblock' })
      next++
    }
    if (hasSuper && classic) {
      if (oldGdt > 0) {
        out.push({ start: next, count: oldGdt, kind: 'gdt' })
        next += oldGdt
      }
      if (sb.reservedGdtBlocks > 0) {
        out.push({ start: next, count: sb.reservedGdtBlocks, kind: 'reserved-gdt' })
        next += sb.reservedGdtBlocks
      }
    }
    if (metaBg) {
      const mg = Math.floor(g / perBlock)
      if (mg >= sb.firstMetaBg) {
        const inMg = g % perBlock
        // e2fsprogs: groups 0, 1 and meta_bg_size - 1 of the meta group, even when it is partial.
        if (inMg === 0 || inMg === 1 || inMg === perBlock - 1) out.push({ start: first + (hasSuper ? 1 : 0), count: 1, kind: 'gdt' })
      }
    }
  }
  return out
}
