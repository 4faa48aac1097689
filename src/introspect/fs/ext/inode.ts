// ext2/3/4 inodes (ext2_fs.h `struct ext2_inode_large`) and the two block
// mapping schemes: classic IND/DIND/TIND pointers and extent trees. Only the
// fields the classifier needs are read.

export const S_IFMT = 0xf000
export const S_IFDIR = 0x4000
export const S_IFREG = 0x8000
export const S_IFLNK = 0xa000

export const EXT4_EXTENTS_FL = 0x80000
export const EXT4_INLINE_DATA_FL = 0x10000000
export const EXT4_EA_INODE_FL = 0x200000
export const EXTENT_MAGIC = 0xf30a
/** Deepest extent tree we follow (the kernel's own limit is 5). */
export const MAX_EXTENT_DEPTH = 5

export interface Inode {
  ino: number
  mode: number
  links: number
  size: number
  flags: number
  fileAcl: number
  /** i_generation: a new file in a reused inode gets another (the kernel draws it at random). */
  generation: number
  /** The 60 bytes of i_block: pointers, an extent header, inline data or a fast symlink target. */
  block: Buffer
}

export function parseInode(b: Buffer, o: number, ino: number): Inode {
  return {
    ino,
    mode: b.readUInt16LE(o + 0x0),
    size: b.readUInt32LE(o + 0x4) + b.readUInt32LE(o + 0x6c) * 2 ** 32,
    links: b.readUInt16LE(o + 0x1a),
    flags: b.readUInt32LE(o + 0x20),
    block: b.subarray(o + 0x28, o + 0x28 + 60),
    fileAcl: b.readUInt32LE(o + 0x68) + b.readUInt16LE(o + 0x76) * 2 ** 32,
    generation: b.readUInt32LE(o + 0x64),
  }
}

/** In use: has a mode and a link (what e2fsck's pass 1 takes as allocated for our purpose). */
export function inUse(i: Inode): boolean {
  return i.mode !== 0 && i.links > 0
}

export interface ExtentHeader {
  entries: number
  max: number
  depth: number
}

export function extentHeader(b: Buffer, o: number): ExtentHeader | null {
  if (b.length < o + 12 || b.readUInt16LE(o) !== EXTENT_MAGIC) return null
  return { entries: b.readUInt16LE(o + 2), max: b.readUInt16LE(o + 4), depth: b.readUInt16LE(o + 6) }
}

/** Children of an extent node: index entries (depth > 0) give child node blocks; leaves give data extents. */
export function extentEntries(b: Buffer, o: number, h: ExtentHeader): { logical: number; start: number; len: number }[] {
  const out: { logical: number; start: number; len: number }[] = []
  const n = Math.min(h.entries, h.max, Math.floor((b.length - o - 12) / 12))
  for (let k = 0; k < n; k++) {
    const e = o + 12 + k * 12
    const logical = b.readUInt32LE(e)
    if (h.depth > 0) {
      out.push({ logical, start: b.readUInt32LE(e + 4) + b.readUInt16LE(e + 8) * 2 ** 32, len: 1 })
    } else {
      let len = b.readUInt16LE(e + 4)
      if (len > 32768) len -= 32768 // uninitialised extent: allocated, reads zeros
      out.push({ logical, start: b.readUInt32LE(e + 8) + b.readUInt16LE(e + 6) * 2 ** 32, len })
    }
  }
  return out
}
