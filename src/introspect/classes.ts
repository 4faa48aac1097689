// The one shared enum of block classes: containers, volumes and file systems
// classify into it; placement asks only isMetadata(), isFastTier() and priorityOf(); stats
// report per class. Numeric values are part of the serialised map format:
// append new classes at the end, never renumber.

export enum BlockClass {
  Data = 0,
  Free = 1,
  Container = 2,
  PartitionTable = 3,
  Superblock = 4,
  GroupDescriptor = 5,
  ReservedGdt = 6,
  BlockBitmap = 7,
  InodeBitmap = 8,
  InodeTable = 9,
  Directory = 10,
  Indirect = 11,
  ExtentTree = 12,
  Xattr = 13,
  Symlink = 14,
  Journal = 15,
  Special = 16,
  Mmp = 17,
  /** Data of a regular file no larger than the mount's small-file size (`--small-files`): not meta-data, but placed with it. */
  SmallFile = 18,
  /** Data of a guest's boot files found by name (kernels, initial RAM disks, init: `--boot-files`): placed with the meta-data. */
  BootFile = 19,
}

export const CLASS_NAMES: Readonly<Record<BlockClass, string>> = Object.freeze({
  [BlockClass.Data]: 'data',
  [BlockClass.Free]: 'free',
  [BlockClass.Container]: 'container',
  [BlockClass.PartitionTable]: 'partition-table',
  [BlockClass.Superblock]: 'superblock',
  [BlockClass.GroupDescriptor]: 'group-descriptor',
  [BlockClass.ReservedGdt]: 'reserved-gdt',
  [BlockClass.BlockBitmap]: 'block-bitmap',
  [BlockClass.InodeBitmap]: 'inode-bitmap',
  [BlockClass.InodeTable]: 'inode-table',
  [BlockClass.Directory]: 'directory',
  [BlockClass.Indirect]: 'indirect',
  [BlockClass.ExtentTree]: 'extent-tree',
  [BlockClass.Xattr]: 'xattr',
  [BlockClass.Symlink]: 'symlink',
  [BlockClass.Journal]: 'journal',
  [BlockClass.Special]: 'special',
  [BlockClass.Mmp]: 'mmp',
  [BlockClass.SmallFile]: 'small-file',
  [BlockClass.BootFile]: 'boot-file',
})

export const ALL_CLASSES: readonly BlockClass[] = Object.freeze(
  (Object.keys(CLASS_NAMES) as unknown as string[]).map((k) => Number(k) as BlockClass),
)

const BY_NAME = new Map<string, BlockClass>(ALL_CLASSES.map((c) => [CLASS_NAMES[c], c]))

export function className(c: BlockClass): string {
  return CLASS_NAMES[c] ?? `unknown(${c})`
}

export function classFromName(name: string): BlockClass {
  const c = BY_NAME.get(name)
  if (c === undefined) throw new Error(`unknown block class name "${name}"`)
  return c
}

/** Meta-data is everything but guest file data (small files' and boot files' included) and free space. */
export function isMetadata(c: BlockClass): boolean {
  return c !== BlockClass.Data && c !== BlockClass.Free && !isFastData(c)
}

/** File data placed with the meta-data: small files' (`--small-files`) and boot files' (`--boot-files`). */
export function isFastData(c: BlockClass): boolean {
  return c === BlockClass.SmallFile || c === BlockClass.BootFile
}

/**
 * What placement keeps on the fast tiers (RAM, the SSD store) and redirects
 * writes of: meta-data, small files' data (the paper's "place small and hot
 * files on fast storage") and boot files' data (its "kernel image, initial
 * RAM disk image, and init ... can be prefetched"), which a map only holds
 * when the mount asked.
 */
export function isFastTier(c: BlockClass): boolean {
  return isMetadata(c) || isFastData(c)
}

/** How placement ranks a class: meta-data by priority, then small-file or boot-file data, then data (and free space). */
export function placementRank(c: BlockClass): number {
  return isMetadata(c) ? 2 + priorityOf(c) : isFastData(c) ? 1 : 0
}

/**
 * The one rule for a 4 KiB file block that bytes of several classes share (a
 * partition starting at sector 63, 1 KiB fs blocks, 512-byte qcow2 clusters,
 * a VHD block bitmap before its data): the higher placementRank wins, and
 * between equal ranks the lower class number, so the answer is a total order
 * and never depends on the order the pieces are met (the fold meets them run
 * by run, the live map byte by byte). Data only when every piece is data.
 */
export function sharedBlockRank(c: BlockClass): number {
  return c === BlockClass.Data ? 0 : 1 + placementRank(c) * 256 + (255 - c)
}

/** The class a 4 KiB block shared by pieces of classes `a` and `b` takes (sharedBlockRank). */
export function sharedBlockClass(a: BlockClass, b: BlockClass): BlockClass {
  return sharedBlockRank(b) > sharedBlockRank(a) ? b : a
}

/**
 * Cache priority of a class, higher = kept longer. Structures every lookup
 * walks (superblock, descriptors, bitmaps, container tables) rank above
 * per-object meta-data (inodes, directories, mapping blocks), which ranks above
 * the journal (written once, read only at recovery).
 */
export function priorityOf(c: BlockClass): number {
  switch (c) {
    case BlockClass.Superblock:
    case BlockClass.GroupDescriptor:
    case BlockClass.Container:
    case BlockClass.PartitionTable:
    case BlockClass.Mmp:
      return 4
    case BlockClass.BlockBitmap:
    case BlockClass.InodeBitmap:
    case BlockClass.InodeTable:
    case BlockClass.Directory:
    case BlockClass.Indirect:
    case BlockClass.ExtentTree:
      return 3
    case BlockClass.Xattr:
    case BlockClass.Symlink:
    case BlockClass.Special:
    case BlockClass.ReservedGdt:
      return 2
    case BlockClass.Journal:
      return 1
    default:
      return 0
  }
}
