// What a volume holds, by magic numbers at fixed offsets (never by type codes:
// a partition typed 0x83 may hold anything).

import type { Reader } from '../reader'

export type VolumeContent = 'ext2' | 'ext3' | 'ext4' | 'xfs' | 'ntfs' | 'vfat' | 'swap' | 'lvm-pv' | 'extended' | 'unknown'

// ext feature bits (ext2_fs.h) that only ext4 sets.
const INCOMPAT_EXT4 = 0x0040 /* extents */ | 0x0080 /* 64bit */ | 0x0200 /* flex_bg */ | 0x0400 /* ea_inode */ | 0x1000 /* dirdata */ | 0x8000 /* inline_data */ | 0x0010 /* meta_bg */
const RO_COMPAT_EXT4 = 0x0008 /* huge_file */ | 0x0010 /* gdt_csum */ | 0x0020 /* dir_nlink */ | 0x0040 /* extra_isize */ | 0x0200 /* bigalloc */ | 0x0400 /* metadata_csum */
const COMPAT_HAS_JOURNAL = 0x0004

/** Classifies the first bytes of a volume (`head`: at least 8 KiB when the volume has them). */
export function contentOf(head: Buffer): VolumeContent {
  const at = (o: number, s: string) => head.length >= o + s.length && head.toString('latin1', o, o + s.length) === s
  if (head.length >= 1024 + 0x68 && head.readUInt16LE(1024 + 0x38) === 0xef53) {
    const compat = head.readUInt32LE(1024 + 0x5c)
    const incompat = head.readUInt32LE(1024 + 0x60)
    const roCompat = head.readUInt32LE(1024 + 0x64)
    if (incompat & INCOMPAT_EXT4 || roCompat & RO_COMPAT_EXT4) return 'ext4'
    return compat & COMPAT_HAS_JOURNAL ? 'ext3' : 'ext2'
  }
  if (at(0, 'XFSB')) return 'xfs'
  if (at(3, 'NTFS    ')) return 'ntfs'
  for (let s = 0; s < 4; s++) if (at(s * 512, 'LABELONE') && at(s * 512 + 24, 'LVM2 001')) return 'lvm-pv'
  if (at(4086, 'SWAPSPACE2') || at(4086, 'SWAP-SPACE')) return 'swap'
  if (head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa && (at(54, 'FAT') || at(82, 'FAT32'))) return 'vfat'
  return 'unknown'
}

export async function detectContent(r: Reader): Promise<VolumeContent> {
  const n = Math.min(r.size, 8192)
  if (n < 512) return 'unknown'
  return contentOf(await r.read(0, n))
}
