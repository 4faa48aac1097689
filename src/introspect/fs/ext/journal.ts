// jbd2: descriptor blocks written to the journal name the home location of
// every meta-data block of their transaction (DESIGN.md, "keeping the map
// true"): the journaled copies that follow the descriptor tell, by content,
// what those home blocks are before the checkpoint writes reach them.

import { BlockClass } from '../../classes'
import { EXTENT_MAGIC } from './inode'
import type { Superblock } from './superblock'

export const JBD2_MAGIC = 0xc03b3998
const DESCRIPTOR_BLOCK = 1
const FEATURE_INCOMPAT_64BIT = 0x2
const FEATURE_INCOMPAT_CSUM_V2 = 0x8
const FEATURE_INCOMPAT_CSUM_V3 = 0x10
const FLAG_SAME_UUID = 0x2
const FLAG_LAST_TAG = 0x8
const XATTR_MAGIC = 0xea020000

export interface JournalLayout {
  /** The journal's extents: logical journal block → fs block. */
  extents: { logical: number; start: number; count: number }[]
  /** From the journal superblock: first log block and length, feature bits. */
  first: number
  maxLen: number
  incompat: number
}

export function parseJournalSuperblock(b: Buffer): { first: number; maxLen: number; incompat: number } | null {
  if (b.length < 0x30 || b.readUInt32BE(0) !== JBD2_MAGIC) return null
  const type = b.readUInt32BE(4)
  if (type !== 3 && type !== 4) return null
  return { maxLen: b.readUInt32BE(0x10), first: b.readUInt32BE(0x14), incompat: type === 4 ? b.readUInt32BE(0x28) : 0 }
}

/**
 * jbd2's journal_tag_bytes(): journal_block_tag3_t (16 bytes) with csum v3;
 * else journal_block_tag_t (12) plus 2 with csum v2, less the 4-byte
 * t_blocknr_high without 64bit.
 */
export function tagBytes(incompat: number): number {
  if (incompat & FEATURE_INCOMPAT_CSUM_V3) return 16
  const sz = 12 + (incompat & FEATURE_INCOMPAT_CSUM_V2 ? 2 : 0)
  return incompat & FEATURE_INCOMPAT_64BIT ? sz : sz - 4
}

function toLogical(j: JournalLayout, fsBlock: number): number | null {
  for (const e of j.extents) if (fsBlock >= e.start && fsBlock < e.start + e.count) return e.logical + (fsBlock - e.start)
  return null
}

function toPhysical(j: JournalLayout, logical: number): number | null {
  for (const e of j.extents) if (logical >= e.logical && logical < e.logical + e.count) return e.start + (logical - e.logical)
  return null
}

/**
 * If `b` (written at fs block `at`, inside the journal) is a descriptor
 * block: [journal fs block of the copy, home fs block] for each tag.
 */
export function jbd2HomeBlocks(b: Buffer, at: number, j: JournalLayout | null): [number, number][] | null {
  if (!j || b.length < 12 || b.readUInt32BE(0) !== JBD2_MAGIC || b.readUInt32BE(4) !== DESCRIPTOR_BLOCK) return null
  const here = toLogical(j, at)
  if (here === null) return null
  const is64 = (j.incompat & FEATURE_INCOMPAT_64BIT) !== 0
  const v3 = (j.incompat & FEATURE_INCOMPAT_CSUM_V3) !== 0
  const csum = v3 || (j.incompat & FEATURE_INCOMPAT_CSUM_V2) !== 0
  const tagSize = tagBytes(j.incompat)
  const end = b.length - (csum ? 4 : 0)
  const out: [number, number][] = []
  let o = 12
  let n = 0
  while (o + tagSize <= end && n < b.length) {
    const lo = b.readUInt32BE(o)
    const flags = v3 ? b.readUInt32BE(o + 4) : b.readUInt16BE(o + 6)
    const hi = is64 ? b.readUInt32BE(v3 ? o + 8 : o + 8) : 0
    const home = lo + hi * 2 ** 32
    // The copy of tag n is the (n+1)-th log block after the descriptor, wrapping to s_first.
    let logical = here + 1 + n
    if (j.maxLen > j.first && logical >= j.maxLen) logical = j.first + (logical - j.maxLen)
    const phys = toPhysical(j, logical)
    if (phys !== null) out.push([phys, home])
    o += tagSize
    if (!(flags & FLAG_SAME_UUID)) o += 16
    n++
    if (flags & FLAG_LAST_TAG) break
  }
  return out
}

/**
 * What a journaled meta-data block is, by its content alone; null when it
 * does not say. Extent nodes and xattr blocks carry a magic; directory
 * blocks are a chain of records covering the block exactly; what is left and
 * reads as a list of block numbers (zero or inside the file system, at least
 * one set) is taken for an indirect block, the one mapping block without a
 * signature. Anything else (file data under data=journal) stays data.
 */
export function sniffClass(b: Buffer, sb: Superblock): BlockClass | null {
  if (b.length >= 12 && b.readUInt16LE(0) === EXTENT_MAGIC) return BlockClass.ExtentTree
  if (b.length >= 4 && b.readUInt32LE(0) === XATTR_MAGIC) return BlockClass.Xattr
  return sniffDirectory(b, sb) ?? sniffIndirect(b, sb)
}

function sniffIndirect(b: Buffer, sb: Superblock): BlockClass | null {
  let set = 0
  for (let o = 0; o + 4 <= b.length; o += 4) {
    const p = b.readUInt32LE(o)
    if (p === 0) continue
    if (p < sb.firstDataBlock || p >= sb.blocksCount) return null
    set++
  }
  return set > 0 ? BlockClass.Indirect : null
}

function sniffDirectory(b: Buffer, sb: Superblock): BlockClass | null {
  // A directory block: a chain of entries that covers the block exactly.
  let o = 0
  let entries = 0
  while (o + 8 <= b.length) {
    const ino = b.readUInt32LE(o)
    const recLen = b.readUInt16LE(o + 4)
    const nameLen = b.readUInt8(o + 6)
    if (recLen < 8 || recLen % 4 !== 0 || o + recLen > b.length || ino > sb.inodesCount || 8 + nameLen > recLen) return null
    o += recLen
    entries++
  }
  return o === b.length && entries > 0 ? BlockClass.Directory : null
}
