// What a volume holds, by magic numbers at fixed offsets (never by type codes:
// a partition typed 0x83 may hold anything). The first match in the order
// below wins; the order follows how specific each magic is.

import type { Reader } from '../reader'

export type VolumeContent = 'ext2' | 'ext3' | 'ext4' | 'xfs' | 'ntfs' | 'vfat' | 'swap' | 'lvm-pv' | 'extended' | 'unknown'

/** Bytes of a volume's head that contentOf looks at. */
export const CONTENT_PROBE_BYTES = 8192

// ext superblock (ext2_fs.h) at byte 1024 of the volume.
const EXT_SB = 1024
const s_log_block_size = 0x18
const s_magic = 0x38
const s_feature_compat = 0x5c
const s_feature_incompat = 0x60
const s_feature_ro_compat = 0x64
const EXT_MAGIC = 0xef53
const COMPAT_HAS_JOURNAL = 0x0004
const INCOMPAT_JOURNAL_DEV = 0x0008
// What ext3 knows (blkid's EXT3_FEATURE_*_SUPP): any other incompat or
// ro_compat bit (extents, 64bit, flex_bg, huge_file, gdt_csum,
// metadata_csum, ...) is ext4's.
const INCOMPAT_EXT3 = 0x0002 /* filetype */ | 0x0004 /* recover */ | 0x0010 /* meta_bg */
const RO_COMPAT_EXT3 = 0x0001 /* sparse_super */ | 0x0002 /* large_file */ | 0x0004 /* btree_dir */

// Linux swap: the signature ends the first page (4 KiB pages assumed).
const SWAP_PAGE = 4096

const SECTOR = 512

/** Classifies the first bytes of a volume (`head`: CONTENT_PROBE_BYTES when the volume has them). */
export function contentOf(head: Buffer): VolumeContent {
  const at = (o: number, s: string) => head.length >= o + s.length && head.toString('latin1', o, o + s.length) === s
  if (head.length >= EXT_SB + 0x68 && head.readUInt16LE(EXT_SB + s_magic) === EXT_MAGIC && head.readUInt32LE(EXT_SB + s_log_block_size) <= 6) {
    const compat = head.readUInt32LE(EXT_SB + s_feature_compat)
    const incompat = head.readUInt32LE(EXT_SB + s_feature_incompat)
    const roCompat = head.readUInt32LE(EXT_SB + s_feature_ro_compat)
    // An external journal device carries an ext superblock but holds no file system.
    if (incompat & INCOMPAT_JOURNAL_DEV) return 'unknown'
    if (incompat & ~INCOMPAT_EXT3 || roCompat & ~RO_COMPAT_EXT3) return 'ext4'
    return compat & COMPAT_HAS_JOURNAL ? 'ext3' : 'ext2'
  }
  if (at(0, 'XFSB')) return 'xfs'
  if (at(3, 'NTFS    ')) return 'ntfs'
  for (let s = 0; s < 4; s++) if (at(s * SECTOR, 'LABELONE') && at(s * SECTOR + 24, 'LVM2 001')) return 'lvm-pv'
  if (at(SWAP_PAGE - 10, 'SWAPSPACE2') || at(SWAP_PAGE - 10, 'SWAP-SPACE')) return 'swap'
  if (head.length >= SECTOR && head[510] === 0x55 && head[511] === 0xaa && (at(54, 'FAT') || at(82, 'FAT32'))) return 'vfat'
  return 'unknown'
}

export async function detectContent(r: Reader): Promise<VolumeContent> {
  const n = Math.min(r.size, CONTENT_PROBE_BYTES)
  if (n < SECTOR) return 'unknown'
  return contentOf(await r.read(0, n))
}
