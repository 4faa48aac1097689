// ext2/ext3/ext4: the class of every fs block (DESIGN.md, pipeline step 3).
// Static structures come from the superblock and group descriptors; inode
// tables are read (only their used part where checksummed descriptors say
// how much is used) as coalesced large reads; then every in-use inode's
// block map is walked level by level (walk.ts).

import { ScanBudget } from '../../budget'
import { BlockClass, isMetadata } from '../../classes'
import { CorruptError, IntrospectError, NotThisFormatError } from '../../errors'
import { ExtentMap, type Run } from '../../map/extent-map'
import type { ClassifiedFs } from '../../map/image-map'
import type { Reader } from '../../reader'
import { EXT4_EA_INODE_FL, EXT4_EXTENTS_FL, inUse, parseInode, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, type Inode } from './inode'
import { jbd2HomeBlocks, parseJournalSuperblock, sniffClass, type JournalLayout } from './journal'
import { COMPAT, featureNames, gdtBlocks, groupHasSuper, INCOMPAT, parseSuperblock, RO_COMPAT, staticLayout, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, type Superblock } from './superblock'
import { CoalescingReader, walkInodes, type WalkTarget } from './walk'

export interface ExtScanOptions {
  onProgress?: (doneBytes: number, totalBytes: number) => void
  /** Reads in flight at once (default 4). */
  concurrency?: number
  /** Largest single read (default 4 MiB). */
  maxReadBytes?: number
  /**
   * Regular files of at most this many bytes (i_size) have their data blocks
   * classed SmallFile instead of Data (default 0: none). Part of a saved
   * state: a restore with another value does not fit (the map would differ).
   */
  smallFileBytes?: number
  /**
   * Find the guest's boot files by name (kernels and initial RAM disks in /
   * and /boot, and /sbin/init, symlinks followed) and class their data
   * blocks BootFile (default false). Part of a saved state too.
   */
  bootFiles?: boolean
  /** What the scan may read and visit (default: unlimited); shared by every volume of one image. */
  budget?: ScanBudget
}

export interface ExtInfo {
  type: 'ext2' | 'ext3' | 'ext4'
  blockSize: number
  blocksCount: number
  inodesCount: number
  groupCount: number
  features: string[]
  uuid: string
  label: string
  /** The journal lives on another device (its blocks are not in this image). */
  externalJournal: boolean
}

export interface ExtObject {
  fsBlock: number
  class: BlockClass
  inode?: number
  logical?: number
  path?: string
}

export interface ExtChange {
  fsBlock: number
  count: number
  from: BlockClass
  to: BlockClass
}

const INODE_UNINIT = 0x1
const BLOCK_UNINIT = 0x2
const MAX_SKIP_REASONS = 20
/** Classes of the file system's own structures: placed by the superblock and descriptors, never by an inode. */
const STATIC_CLASSES: ReadonlySet<BlockClass> = new Set([
  BlockClass.Superblock,
  BlockClass.GroupDescriptor,
  BlockClass.ReservedGdt,
  BlockClass.BlockBitmap,
  BlockClass.InodeBitmap,
  BlockClass.InodeTable,
  BlockClass.Mmp,
])
/** objectsAt answers at most this many blocks a call. */
export const MAX_OBJECTS = 1 << 20
/** Journal blocks whose descriptor named a home block, waiting for their copy to be written (oldest dropped past this). */
const MAX_PENDING_JOURNAL = 1 << 16
const ROOT_INO = 2
/** Names of kernels and initial RAM disks (Debian's vmlinuz-*, initrd.img-*; Red Hat's initramfs-*.img; bare vmlinuz, bzImage). */
const BOOT_NAME = /^(vmlinuz|vmlinux|bzImage|initrd|initramfs|kernel)([-._].*)?$/
/** At most this many boot files, each at most this large (a hostile image cannot fill the SSD store by naming files). */
const MAX_BOOT_FILES = 32
const MAX_BOOT_FILE_BYTES = 1 << 30
/** Directories read while looking for boot files: at most this many, of at most this many blocks each (a hostile image's symlink loops end there). */
const MAX_DIR_READS = 64
const MAX_DIR_BLOCKS = 256
const EXT_STATE_MAGIC = Buffer.from('VMDIEXT1', 'latin1')
const RESIZE_INO = 7

/** Blocks of meta-data classes in a map (small files' data is not meta-data). */
function metadataBlocks(map: ExtentMap): number {
  let n = 0
  for (const [cls, c] of map.countByClass()) if (isMetadata(cls)) n += c
  return n
}

export async function probeExt(r: Reader): Promise<boolean> {
  if (r.size < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE) return false
  const b = await r.read(SUPERBLOCK_OFFSET + 0x38, 2)
  return b.readUInt16LE(0) === 0xef53
}

export async function scanExt(r: Reader, opts: ExtScanOptions = {}): Promise<ExtFs> {
  const fs = new ExtFs(r, opts)
  await fs.scan()
  return fs
}

export class ExtFs implements ClassifiedFs {
  info!: ExtInfo
  map = new ExtentMap()
  readonly stats = { bytesRead: 0, reads: 0, metadataBlocks: 0, ms: 0, skipped: { count: 0, reasons: [] as string[] } }
  private sb!: Superblock
  private src!: CoalescingReader
  // Per group, from the descriptors (typed arrays: no object per group).
  private blockBitmap!: Float64Array
  private inodeBitmap!: Float64Array
  private inodeTable!: Float64Array
  private gdFlags!: Uint16Array
  private itableUnused!: Uint32Array
  private itableBlocks = 0
  /** Mapping blocks (IND/DIND/TIND, extent nodes) → owning inode: update() re-walks the owner when one is written. */
  private mappingOwner = new Map<number, number>()
  /** Journal block → home block named by a jbd2 descriptor, until the journaled copy is seen. */
  private pendingJournal = new Map<number, number>()
  /** Inodes referring to each xattr block (the kernel shares identical ones): it stays xattr until the last one lets go. */
  private xattrRefs = new Map<number, number>()
  /** update() and objectsAt() run one at a time: an update's reads and map edits never interleave with another's. */
  private queue: Promise<unknown> = Promise.resolve()
  private parents: Map<number, { parent: number; name: string }> | null = null
  private journal: JournalLayout | null = null
  private journalExtents: JournalLayout['extents'] = []
  /** Block-bitmap home block → the groups whose bitmap it is (built at the first bitmapCover, dropped when a descriptor is parsed). */
  private bitmapHomes: Map<number, number[]> | null = null

  private readonly smallFileBytes: number
  private readonly bootFiles: boolean
  /** Inodes of the boot files found by name at the scan, with their i_generation (a freed or reused one leaves). */
  private bootInodes = new Map<number, number>()
  /** Directory reads the boot-file lookup may still make. */
  private lookupBudget = 0
  private readonly budget: ScanBudget

  constructor(private readonly r: Reader, private readonly opts: ExtScanOptions = {}) {
    this.smallFileBytes = Math.max(0, Math.floor(opts.smallFileBytes ?? 0))
    this.bootFiles = opts.bootFiles ?? false
    this.budget = opts.budget ?? ScanBudget.unlimited()
  }

  /** The inodes classed boot-file (for reports and tests). */
  get bootFileInodes(): number[] {
    return [...this.bootInodes.keys()].sort((a, b) => a - b)
  }

  private skip(reason: string): void {
    this.stats.skipped.count++
    if (this.stats.skipped.reasons.length < MAX_SKIP_REASONS) this.stats.skipped.reasons.push(reason)
  }

  /** Superblock, info and group descriptors: what both a scan and a restore start from. */
  private async readStatic(): Promise<void> {
    if (this.r.size < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE) throw new NotThisFormatError('too small for an ext superblock', { file: this.r.name, layer: 'ext4' })
    const sbBytes = await this.r.read(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE)
    const sb = parseSuperblock(sbBytes, this.r.size, this.r.name)
    this.sb = sb
    const bs = sb.blockSize
    // Checked before any per-group array exists: a superblock claiming 2^27 groups costs nothing but this message.
    this.budget.visit(sb.groupCount * 3, `${sb.groupCount} block groups`)
    this.src = new CoalescingReader(this.r, bs, sb.blocksCount, this.opts.maxReadBytes ?? 4 << 20, this.opts.concurrency ?? 4, this.budget)
    const journal = (sb.compat & COMPAT.has_journal) !== 0
    this.info = Object.freeze({
      type: sb.incompat & (INCOMPAT.extent | INCOMPAT['64bit'] | INCOMPAT.flex_bg | INCOMPAT.inline_data | INCOMPAT.meta_bg) ||
        sb.roCompat & (RO_COMPAT.huge_file | RO_COMPAT.uninit_bg | RO_COMPAT.dir_nlink | RO_COMPAT.extra_isize | RO_COMPAT.metadata_csum)
        ? 'ext4'
        : journal
          ? 'ext3'
          : 'ext2',
      blockSize: bs,
      blocksCount: sb.blocksCount,
      inodesCount: sb.inodesCount,
      groupCount: sb.groupCount,
      features: featureNames(sb),
      uuid: sb.uuid,
      label: sb.label,
      externalJournal: journal && sb.journalInum === 0,
    }) as ExtInfo
    this.itableBlocks = Math.ceil((sb.inodesPerGroup * sb.inodeSize) / bs)
    await this.readDescriptors()
  }

  async scan(): Promise<void> {
    const t0 = process.hrtime.bigint()
    await this.readStatic()
    const sb = this.sb
    const bs = sb.blockSize
    const runs: Run[] = []
    this.addGroupStructures(runs)
    if (sb.incompat & INCOMPAT.mmp && sb.mmpBlock > 0 && sb.mmpBlock < sb.blocksCount) runs.push([sb.mmpBlock, 1, BlockClass.Mmp])
    const nStatic = runs.length
    if (this.bootFiles) await this.findBootFiles()

    // Inode tables: the used part of each, coalesced across groups (flex_bg packs them together).
    const want = this.inodeTableParts('scan')
    const totalBytes = want.reduce((a, w) => a + w.blocks * bs, 0)
    const gap = Math.max(1, Math.floor((256 << 10) / bs))
    const maxPer = Math.max(1, Math.floor((this.opts.maxReadBytes ?? 4 << 20) / bs))
    const reads: [number, number][] = []
    const owners: number[][] = []
    want.forEach((w, k) => {
      const last = reads[reads.length - 1]
      if (last && w.start >= last[0] + last[1] && w.start - (last[0] + last[1]) <= gap && w.start + w.blocks - last[0] <= maxPer) {
        last[1] = w.start + w.blocks - last[0]
        owners[owners.length - 1].push(k)
      } else {
        reads.push([w.start, w.blocks])
        owners.push([k])
      }
    })
    const targets: WalkTarget[] = []
    let done = 0
    // Read in batches so a huge file system never holds all its inode tables at once; a table
    // larger than one read (inodes per group x inode size reaches 16 GiB) is read in pieces.
    const perRead = maxPer
    for (let i = 0; i < reads.length; i += 16) {
      const batch = reads.slice(i, i + 16)
      const small = batch.every(([, c]) => c <= maxPer)
      const bufs = small ? await this.src.readRuns(batch) : null
      for (let j = 0; j < batch.length; j++) {
        const [start] = batch[j]
        for (const k of owners[i + j]) {
          const w = want[k]
          this.budget.visit(w.inodes, `${w.inodes} inodes of group ${w.group}`)
          const perBlock = bs / sb.inodeSize
          for (let b0 = 0; b0 < w.blocks; b0 += perRead) {
            const nb = Math.min(perRead, w.blocks - b0)
            const buf = bufs ? bufs[j] : (await this.src.readRuns([[w.start + b0, nb]]))[0]
            const base = bufs ? (w.start - start + b0) * bs : 0
            const n0 = b0 * perBlock
            const n1 = Math.min(w.inodes, (b0 + nb) * perBlock)
            for (let n = n0; n < n1; n++) {
              if ((n & 1023) === 0) await this.budget.tick()
              const ino = w.group * sb.inodesPerGroup + n + 1
              const inode = parseInode(buf, base + (n - n0) * sb.inodeSize, ino)
              const t = this.target(inode, runs)
              if (inUse(inode)) this.addXattrRef(inode.fileAcl, 1)
              if (t) targets.push(t)
            }
          }
          done += w.blocks * bs
        }
      }
      this.opts.onProgress?.(done, totalBytes)
      if (targets.length > 65536) await this.walk(targets.splice(0), runs)
    }
    await this.walk(targets, runs)
    this.map = this.buildMap(runs, nStatic)
    await this.readJournalSuperblock()
    this.stats.bytesRead = this.src.bytesRead + SUPERBLOCK_SIZE
    this.stats.reads = this.src.reads + 1
    this.stats.metadataBlocks = metadataBlocks(this.map)
    this.stats.ms = Number(process.hrtime.bigint() - t0) / 1e6
  }

  /**
   * The used part of each group's inode table, in block order, each table
   * once: a table that starts inside an earlier one (a hostile image whose
   * descriptors all name one table) is a counted skip, not read again.
   */
  private inodeTableParts(what: string): { group: number; start: number; blocks: number; inodes: number }[] {
    const sb = this.sb
    const bs = sb.blockSize
    const csum = (sb.roCompat & (RO_COMPAT.uninit_bg | RO_COMPAT.metadata_csum)) !== 0
    const want: { group: number; start: number; blocks: number; inodes: number }[] = []
    for (let g = 0; g < sb.groupCount; g++) {
      let used = sb.inodesPerGroup
      if (csum) used = this.gdFlags[g] & INODE_UNINIT ? 0 : Math.max(0, sb.inodesPerGroup - this.itableUnused[g])
      if (used === 0) continue
      const blocks = Math.ceil((used * sb.inodeSize) / bs)
      if (this.inodeTable[g] + blocks > sb.blocksCount || this.inodeTable[g] === 0) {
        if (what === 'scan') this.skip(`group ${g}: inode table at ${this.inodeTable[g]} is outside the file system`)
        continue
      }
      want.push({ group: g, start: this.inodeTable[g], blocks, inodes: used })
    }
    want.sort((a, b) => a.start - b.start || a.group - b.group)
    const out: typeof want = []
    let end = 0
    let shared = 0
    for (const w of want) {
      if (w.start < end) {
        shared++
        continue
      }
      out.push(w)
      end = w.start + this.itableBlocks
    }
    if (shared && what === 'scan') this.skip(`${shared} group(s) name an inode table that overlaps another group's: each table is read once`)
    return out
  }

  /**
   * Inode-table blocks no inode uses yet (past each group's used part, as the
   * checksummed descriptors say): meta-data space, but nothing to read ahead.
   * Without uninit_bg/metadata_csum every table counts as used.
   */
  unusedInodeTableRuns(): Run[] {
    const sb = this.sb
    const out: Run[] = []
    if (!(sb.roCompat & (RO_COMPAT.uninit_bg | RO_COMPAT.metadata_csum))) return out
    for (let g = 0; g < sb.groupCount; g++) {
      const used = this.gdFlags[g] & INODE_UNINIT ? 0 : Math.max(0, sb.inodesPerGroup - this.itableUnused[g])
      const usedBlocks = Math.ceil((used * sb.inodeSize) / sb.blockSize)
      if (usedBlocks < this.itableBlocks && this.inodeTable[g] > 0) out.push([this.inodeTable[g] + usedBlocks, this.itableBlocks - usedBlocks, BlockClass.InodeTable])
    }
    return out
  }

  /**
   * What update() needs besides the superblock and descriptors, for a later
   * restore() of the same, unchanged file system without walking its inodes:
   * the map, which inode owns each mapping block, xattr block references and
   * the journal's extents. Binary: magic, a JSON header, then typed arrays.
   */
  exportState(): Buffer {
    const head = Buffer.from(JSON.stringify({ uuid: this.info.uuid, blocksCount: this.info.blocksCount, journalExtents: this.journalExtents, smallFileBytes: this.smallFileBytes, bootFiles: this.bootFiles, bootInodes: [...this.bootInodes] }))
    const map = this.map.serialize(this.info.blockSize)
    const owners = new Float64Array(this.mappingOwner.size * 2)
    let k = 0
    for (const [b, ino] of this.mappingOwner) (owners[k++] = b), (owners[k++] = ino)
    const refs = new Float64Array(this.xattrRefs.size * 2)
    k = 0
    for (const [b, n] of this.xattrRefs) (refs[k++] = b), (refs[k++] = n)
    const parts = [head, map, Buffer.from(owners.buffer), Buffer.from(refs.buffer)]
    const out = Buffer.alloc(8 + 4 * parts.length + parts.reduce((a, p) => a + p.length, 0))
    EXT_STATE_MAGIC.copy(out, 0)
    let at = 8
    for (const p of parts) {
      out.writeUInt32LE(p.length, at)
      p.copy(out, at + 4)
      at += 4 + p.length
    }
    return out
  }

  /** An ExtFs from exportState() of the same file system: reads the superblock, descriptors and journal superblock only. Throws when the state does not fit. */
  static async restore(r: Reader, state: Buffer, opts: ExtScanOptions = {}): Promise<ExtFs> {
    const t0 = process.hrtime.bigint()
    const fs = new ExtFs(r, opts)
    await fs.readStatic()
    const bad = (why: string) => new CorruptError(`saved ext state does not fit: ${why}`, { file: r.name, layer: 'ext4' })
    if (state.length < 8 || !state.subarray(0, 8).equals(EXT_STATE_MAGIC)) throw bad('bad magic')
    const parts: Buffer[] = []
    let at = 8
    for (let k = 0; k < 4; k++) {
      if (at + 4 > state.length) throw bad('truncated')
      const n = state.readUInt32LE(at)
      if (at + 4 + n > state.length) throw bad('truncated')
      parts.push(state.subarray(at + 4, at + 4 + n))
      at += 4 + n
    }
    const head = JSON.parse(parts[0].toString()) as { uuid: string; blocksCount: number; journalExtents: JournalLayout['extents']; smallFileBytes?: number; bootFiles?: boolean; bootInodes?: [number, number][] }
    if (head.uuid !== fs.info.uuid || head.blocksCount !== fs.info.blocksCount) throw bad(`made for ${head.uuid} with ${head.blocksCount} blocks`)
    if ((head.smallFileBytes ?? 0) !== fs.smallFileBytes) throw bad(`made with small files up to ${head.smallFileBytes ?? 0} bytes, not ${fs.smallFileBytes}`)
    if ((head.bootFiles ?? false) !== fs.bootFiles) throw bad(`made with boot files ${head.bootFiles ? 'on' : 'off'}`)
    fs.bootInodes = new Map(head.bootInodes ?? [])
    fs.map = ExtentMap.deserialize(Buffer.from(parts[1])).map
    const owners = new Float64Array(new Uint8Array(parts[2]).buffer)
    for (let k = 0; k + 1 < owners.length; k += 2) fs.mappingOwner.set(owners[k], owners[k + 1])
    const refs = new Float64Array(new Uint8Array(parts[3]).buffer)
    for (let k = 0; k + 1 < refs.length; k += 2) fs.xattrRefs.set(refs[k], refs[k + 1])
    fs.journalExtents = head.journalExtents
    await fs.readJournalSuperblock()
    fs.stats.bytesRead = fs.src.bytesRead + SUPERBLOCK_SIZE
    fs.stats.reads = fs.src.reads + 1
    fs.stats.metadataBlocks = metadataBlocks(fs.map)
    fs.stats.ms = Number(process.hrtime.bigint() - t0) / 1e6
    return fs
  }

  /**
   * The file system's own structures (runs[0, nStatic)) first; what inodes claim fills only
   * what they leave (a corrupt inode claiming part of an inode table or the reserved GDT is a
   * counted skip there, whatever the class priorities say).
   */
  private buildMap(runs: Run[], nStatic: number): ExtentMap {
    const own = runs.slice(0, nStatic)
    const ownMap = ExtentMap.fromRuns(own)
    const out: Run[] = own
    for (let k = nStatic; k < runs.length; k++) {
      const [s, c, cls] = runs[k]
      let cur = s
      for (const [s2, c2, k2] of ownMap.runsIn(s, c)) {
        if (s2 > cur) out.push([cur, s2 - cur, cls])
        if (k2 !== cls) this.skip(`block ${s2} (+${c2}) is the file system's own ${BlockClass[k2]}, claimed as ${BlockClass[cls]} by an inode`)
        cur = s2 + c2
      }
      if (cur < s + c) out.push([cur, s + c - cur, cls])
    }
    return ExtentMap.fromRuns(out)
  }

  private async readDescriptors(): Promise<void> {
    const sb = this.sb
    const bs = sb.blockSize
    const n = sb.groupCount
    this.blockBitmap = new Float64Array(n)
    this.inodeBitmap = new Float64Array(n)
    this.inodeTable = new Float64Array(n)
    this.gdFlags = new Uint16Array(n)
    this.itableUnused = new Uint32Array(n)
    const perBlock = bs / sb.descSize
    const nBlocks = gdtBlocks(sb)
    // Where descriptor block k of the primary copy is.
    const loc: number[] = []
    const metaBg = (sb.incompat & INCOMPAT.meta_bg) !== 0
    for (let k = 0; k < nBlocks; k++) {
      if (!metaBg || k < sb.firstMetaBg) loc.push(sb.firstDataBlock + 1 + k)
      else {
        const g = k * perBlock
        loc.push(sb.firstDataBlock + g * sb.blocksPerGroup + (groupHasSuper(sb, g) ? 1 : 0))
      }
    }
    const bufs = await this.src.readBlocks(loc)
    const is64 = sb.descSize >= 64
    for (let g = 0; g < n; g++) {
      const k = Math.floor(g / perBlock)
      const b = bufs.get(loc[k]) as Buffer
      const o = (g % perBlock) * sb.descSize
      this.parseDescriptor(g, b, o, is64)
    }
  }

  private parseDescriptor(g: number, b: Buffer, o: number, is64: boolean): void {
    const hi = (off: number) => (is64 ? b.readUInt32LE(o + off) * 2 ** 32 : 0)
    this.bitmapHomes = null
    this.blockBitmap[g] = b.readUInt32LE(o + 0x0) + hi(0x20)
    this.inodeBitmap[g] = b.readUInt32LE(o + 0x4) + hi(0x24)
    this.inodeTable[g] = b.readUInt32LE(o + 0x8) + hi(0x28)
    this.gdFlags[g] = b.readUInt16LE(o + 0x12)
    this.itableUnused[g] = b.readUInt16LE(o + 0x1c) + (is64 ? b.readUInt16LE(o + 0x32) * 65536 : 0)
  }

  private addGroupStructures(runs: Run[]): void {
    const sb = this.sb
    const cls = { superblock: BlockClass.Superblock, gdt: BlockClass.GroupDescriptor, 'reserved-gdt': BlockClass.ReservedGdt } as const
    for (const s of staticLayout(sb)) {
      if (s.start + s.count > sb.blocksCount) continue
      runs.push([s.start, s.count, cls[s.kind]])
    }
    for (let g = 0; g < sb.groupCount; g++) this.addGroup(g, runs)
  }

  private addGroup(g: number, runs: Run[]): void {
    const sb = this.sb
    const ok = (b: number, n: number, what: string) => {
      if (b > 0 && b + n <= sb.blocksCount) return true
      this.skip(`group ${g}: ${what} at block ${b} is outside the file system`)
      return false
    }
    if (ok(this.blockBitmap[g], 1, 'block bitmap')) runs.push([this.blockBitmap[g], 1, BlockClass.BlockBitmap])
    if (ok(this.inodeBitmap[g], 1, 'inode bitmap')) runs.push([this.inodeBitmap[g], 1, BlockClass.InodeBitmap])
    // The whole table is meta-data space, initialised or not.
    if (ok(this.inodeTable[g], this.itableBlocks, 'inode table')) runs.push([this.inodeTable[g], this.itableBlocks, BlockClass.InodeTable])
  }

  /** What an inode's blocks are; null for inodes with nothing to walk. Adds its xattr block. */
  private target(inode: Inode, runs: Run[]): WalkTarget | null {
    const sb = this.sb
    const ino = inode.ino
    if (!inUse(inode)) return null
    if (inode.fileAcl) {
      if (inode.fileAcl < sb.blocksCount) runs.push([inode.fileAcl, 1, BlockClass.Xattr])
      else this.skip(`inode ${ino}: xattr block ${inode.fileAcl} is outside the file system`)
    }
    if (ino === RESIZE_INO && sb.compat & COMPAT.resize_inode) {
      // Its DIND block is the one block of its own: the blocks under it are the reserved GDT blocks (and their backups).
      const dind = inode.block.readUInt32LE(13 * 4)
      if (dind > 0 && dind < sb.blocksCount) {
        runs.push([dind, 1, BlockClass.Indirect])
        this.mappingOwner.set(dind, ino)
      }
      return null
    }
    let dataClass: BlockClass | null = null
    const type = inode.mode & S_IFMT
    if (sb.journalInum && ino === sb.journalInum) dataClass = BlockClass.Journal
    else if (ino < sb.firstIno && ino !== ROOT_INO) dataClass = BlockClass.Special
    else if (sb.quotaInums.includes(ino) || (sb.orphanFileInum && ino === sb.orphanFileInum)) dataClass = BlockClass.Special
    else if (type === S_IFDIR) dataClass = BlockClass.Directory
    else if (type === S_IFLNK) dataClass = BlockClass.Symlink
    else if (inode.flags & EXT4_EA_INODE_FL) dataClass = BlockClass.Xattr
    else if (type === S_IFREG && this.bootInodes.get(ino) === inode.generation) dataClass = BlockClass.BootFile
    else if (type === S_IFREG && inode.size > 0 && inode.size <= this.smallFileBytes) dataClass = BlockClass.SmallFile
    return { inode, dataClass }
  }

  private async walk(targets: WalkTarget[], runs: Run[]): Promise<void> {
    const budget = this.budget
    await walkInodes(this.src, targets, {
      meta: (start, count, cls, ino, logical) => {
        budget.visit(1, `inode ${ino}'s block map`)
        runs.push([start, count, cls])
        if (cls === BlockClass.Journal && logical !== undefined) this.journalExtents.push({ logical, start, count })
        if (cls === BlockClass.Indirect || cls === BlockClass.ExtentTree) this.mappingOwner.set(start, ino)
      },
      skip: (reason) => this.skip(reason),
      tick: () => budget.tick(),
    })
  }

  /** The jbd2 superblock (logical journal block 0): tag sizes of descriptor blocks depend on its features. */
  private async readJournalSuperblock(): Promise<void> {
    const ext = this.journalExtents.sort((a, b) => a.logical - b.logical)
    const first = ext.find((e) => e.logical === 0)
    if (!first) return
    const js = parseJournalSuperblock(await this.r.read(first.start * this.sb.blockSize, this.sb.blockSize))
    this.src.bytesRead += this.sb.blockSize
    this.src.reads++
    if (js) this.journal = { extents: ext, ...js }
  }

  classOf(fsBlock: number): BlockClass {
    return this.map.classOf(fsBlock)
  }

  /** Bytes per fs block (ClassifiedFs: what the image map needs of a file system). */
  get blockSize(): number {
    return this.info.blockSize
  }

  /** The non-data runs of the map, in fs blocks. */
  runs(): Iterable<Run> {
    return this.map.runs()
  }

  /** The same, clipped to fs blocks [start, start + count). */
  runsIn(start: number, count: number): Iterable<Run> {
    return this.map.runsIn(start, count)
  }

  /**
   * Whether every fs block of [start, start+count) is free in the block
   * bitmaps as they are now at their home locations (read through the reader:
   * for a mount, its own cached copies). The guest's allocator marks blocks
   * used in its journal first and checkpoints the bitmaps later, so a write
   * to such a block is new data: allocated since the last checkpoint. Groups
   * whose bitmap the descriptors say is uninitialised (BLOCK_UNINIT) are
   * free; the group's own structures are classed meta-data and never asked.
   */
  async unallocated(start: number, count: number): Promise<boolean> {
    const sb = this.sb
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(count) || count <= 0 || start < sb.firstDataBlock || start + count > sb.blocksCount) return false
    const bs = sb.blockSize
    const csum = (sb.roCompat & (RO_COMPAT.uninit_bg | RO_COMPAT.metadata_csum)) !== 0
    for (let b = start; b < start + count; ) {
      const rel = b - sb.firstDataBlock
      const g = Math.floor(rel / sb.blocksPerGroup)
      const bit0 = rel % sb.blocksPerGroup
      const n = Math.min(start + count - b, sb.blocksPerGroup - bit0)
      if (!(csum && this.gdFlags[g] & BLOCK_UNINIT)) {
        const at = this.blockBitmap[g]
        if (at < sb.firstDataBlock || at >= sb.blocksCount) return false
        const bm = await this.r.read(at * bs, bs)
        for (let i = bit0; i < bit0 + n; i++) if (bm[i >> 3] & (1 << (i & 7))) return false
      }
      b += n
    }
    return true
  }

  /**
   * Every run [start, count] of fs blocks that unallocated() answers true
   * for, passed to `each` in ascending order: merged within a group, never
   * across a group boundary (so a caller's work per call stays bounded).
   * Each group's bitmap is read once, through the reader as unallocated()
   * reads it, and walked a byte at a time where a byte is all free or all
   * used; a BLOCK_UNINIT group (uninit_bg/metadata_csum) is free whole; a
   * group whose bitmap lies outside the file system or cannot be read is in
   * use. Yields to the event loop (setImmediate) between groups once
   * `yieldMs` ms have passed since the last yield.
   */
  async freeRuns(each: (start: number, count: number) => void, yieldMs = 5): Promise<void> {
    const sb = this.sb
    const bs = sb.blockSize
    const csum = (sb.roCompat & (RO_COMPAT.uninit_bg | RO_COMPAT.metadata_csum)) !== 0
    let last = performance.now()
    for (let g = 0; g < sb.groupCount; g++) {
      const base = sb.firstDataBlock + g * sb.blocksPerGroup
      const n = Math.min(sb.blocksPerGroup, sb.blocksCount - base)
      if (n <= 0) break
      if (csum && this.gdFlags[g] & BLOCK_UNINIT) each(base, n)
      else {
        const at = this.blockBitmap[g]
        let bm: Buffer | null = null
        if (at >= sb.firstDataBlock && at < sb.blocksCount) bm = await this.r.read(at * bs, bs).catch(() => null)
        if (bm) {
          let run = -1
          for (let i = 0; i < n; ) {
            const byte = bm[i >> 3]
            if ((i & 7) === 0 && i + 8 <= n && (byte === 0 || byte === 0xff)) {
              if (byte === 0) {
                if (run < 0) run = i
              } else if (run >= 0) {
                each(base + run, i - run)
                run = -1
              }
              i += 8
              continue
            }
            if (byte & (1 << (i & 7))) {
              if (run >= 0) each(base + run, i - run)
              run = -1
            } else if (run < 0) run = i
            i++
          }
          if (run >= 0) each(base + run, n - run)
        }
      }
      if (performance.now() - last >= yieldMs) {
        await new Promise((r) => setImmediate(r))
        last = performance.now()
      }
    }
  }

  /**
   * The fs blocks whose allocation the block bitmaps among fs blocks
   * [start, start + count) record: for each group whose bitmap's home
   * (its descriptor's block bitmap) lies there, the group's blocks
   * [firstDataBlock + g × blocksPerGroup, + blocksPerGroup) clipped to the
   * file system, as ascending merged runs [start, count]; empty when no
   * bitmap lies there. With flex_bg one block range holds several groups'
   * bitmaps. A Map lookup per block (the map is built at the first call).
   */
  bitmapCover(start: number, count: number): [number, number][] {
    const sb = this.sb
    if (!this.bitmapHomes) {
      const homes = new Map<number, number[]>()
      for (let g = 0; g < sb.groupCount; g++) {
        const at = this.blockBitmap[g]
        const list = homes.get(at)
        if (list) list.push(g)
        else homes.set(at, [g])
      }
      this.bitmapHomes = homes
    }
    const groups: number[] = []
    if (count > this.bitmapHomes.size) {
      for (const [at, gs] of this.bitmapHomes) if (at >= start && at < start + count) groups.push(...gs)
    } else {
      for (let b = start; b < start + count; b++) {
        const gs = this.bitmapHomes.get(b)
        if (gs) groups.push(...gs)
      }
    }
    groups.sort((a, b) => a - b)
    const out: [number, number][] = []
    for (const g of groups) {
      const s = sb.firstDataBlock + g * sb.blocksPerGroup
      const c = Math.min(sb.blocksPerGroup, sb.blocksCount - s)
      if (c <= 0) continue
      const prev = out[out.length - 1]
      if (prev && prev[0] + prev[1] >= s) prev[1] = Math.max(prev[1], s + c - prev[0])
      else out.push([s, c])
    }
    return out
  }

  /**
   * Which inode, logical block and path each block belongs to. Like debugfs
   * icheck + ncheck: walks every in-use inode's map (data included), so it
   * costs a scan; meant for the CLI's --at and for tests, not the datapath.
   */
  objectsAt(fsBlock: number, count: number): Promise<ExtObject[]> {
    if (!Number.isSafeInteger(fsBlock) || !Number.isSafeInteger(count) || fsBlock < 0 || count < 0 || count > MAX_OBJECTS) {
      return Promise.reject(new RangeError(`objectsAt: bad range ${fsBlock}+${count} (at most ${MAX_OBJECTS} blocks a call)`))
    }
    return this.serial(() => this.objectsAtNow(fsBlock, count))
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn, fn)
    this.queue = p.catch(() => undefined)
    return p
  }

  private addXattrRef(block: number, delta: number): void {
    if (!block || block >= this.sb.blocksCount) return
    const n = (this.xattrRefs.get(block) ?? 0) + delta
    if (n > 0) this.xattrRefs.set(block, n)
    else this.xattrRefs.delete(block)
  }

  private async objectsAtNow(fsBlock: number, count: number): Promise<ExtObject[]> {
    const sb = this.sb
    const out: ExtObject[] = []
    for (let b = fsBlock; b < fsBlock + count; b++) out.push({ fsBlock: b, class: this.classOf(b) })
    const lo = fsBlock
    const hi = fsBlock + count
    const hits = (start: number, n: number, ino: number, logical?: number) => {
      for (let b = Math.max(start, lo); b < Math.min(start + n, hi); b++) {
        const o = out[b - lo]
        o.inode = ino
        if (logical !== undefined) o.logical = logical + (b - start)
      }
    }
    // Inode-table blocks name their first inode.
    for (const o of out) {
      if (o.class !== BlockClass.InodeTable) continue
      for (let g = 0; g < sb.groupCount; g++) {
        const t = this.inodeTable[g]
        if (o.fsBlock >= t && o.fsBlock < t + this.itableBlocks) {
          o.inode = g * sb.inodesPerGroup + Math.floor(((o.fsBlock - t) * sb.blockSize) / sb.inodeSize) + 1
        }
      }
    }
    const targets: WalkTarget[] = []
    await this.forEachInode((inode) => {
      if (inode.fileAcl >= lo && inode.fileAcl < hi) hits(inode.fileAcl, 1, inode.ino)
      if (inode.ino === RESIZE_INO) {
        hits(inode.block.readUInt32LE(13 * 4), 1, inode.ino)
        return
      }
      targets.push({ inode, dataClass: null })
    })
    const src = new CoalescingReader(this.r, sb.blockSize, sb.blocksCount, 4 << 20, 4)
    await walkInodes(
      src,
      targets,
      {
        meta: (start, n, _cls, ino, logical) => hits(start, n, ino, logical),
        data: (start, n, ino, logical) => hits(start, n, ino, logical),
        skip: () => undefined,
      },
      true,
    )
    const paths = new Map<number, string>()
    for (const o of out) {
      if (o.inode === undefined || o.class === BlockClass.InodeTable) continue
      if (!paths.has(o.inode)) paths.set(o.inode, await this.pathOf(o.inode))
      const p = paths.get(o.inode)
      if (p) o.path = p
    }
    return out
  }

  private async forEachInode(fn: (i: Inode) => void): Promise<void> {
    const sb = this.sb
    const bs = sb.blockSize
    // In pieces of at most 4 MiB: a table can be far larger than one Buffer may be.
    const per = Math.max(1, Math.floor((4 << 20) / bs))
    for (const w of this.inodeTableParts('objects')) {
      for (let b0 = 0; b0 < w.blocks; b0 += per) {
        const nb = Math.min(per, w.blocks - b0)
        const buf = await this.r.read((w.start + b0) * bs, nb * bs)
        const n0 = (b0 * bs) / sb.inodeSize
        const n1 = Math.min(w.inodes, ((b0 + nb) * bs) / sb.inodeSize)
        for (let n = n0; n < n1; n++) {
          const inode = parseInode(buf, (n - n0) * sb.inodeSize, w.group * sb.inodesPerGroup + n + 1)
          if (inUse(inode)) fn(inode)
        }
        await this.budget.tick()
      }
    }
  }

  private async readInode(ino: number, overlay?: Map<number, Buffer>): Promise<Inode> {
    const sb = this.sb
    const g = Math.floor((ino - 1) / sb.inodesPerGroup)
    const idx = (ino - 1) % sb.inodesPerGroup
    const off = this.inodeTable[g] * sb.blockSize + idx * sb.inodeSize
    const pending = overlay?.get(Math.floor(off / sb.blockSize))
    if (pending) return parseInode(pending, off % sb.blockSize, ino)
    return parseInode(await this.r.read(off, sb.inodeSize), 0, ino)
  }

  /** Each entry of one directory block but . and (unless `dotdot`) .. ; a bad rec_len ends the block, counted as a skip. */
  private dirBlockEntries(buf: Buffer, dino: number, block: number, fn: (name: string, child: number) => void, dotdot = false): void {
    for (let o = 0; o + 8 <= buf.length; ) {
      const child = buf.readUInt32LE(o)
      const recLen = buf.readUInt16LE(o + 4)
      const nameLen = buf.readUInt8(o + 6)
      if (recLen < 8 || o + recLen > buf.length) {
        this.skip(`directory inode ${dino}: block ${block}: rec_len ${recLen} at byte ${o}`)
        break
      }
      if (child && nameLen && 8 + nameLen <= recLen) {
        const name = buf.toString('utf8', o + 8, o + 8 + nameLen)
        if (name !== '.' && (name !== '..' || dotdot)) fn(name, child)
      }
      o += recLen
    }
  }

  /** Name → inode of a directory's entries, .. included (empty if ino is not a directory or is out of range). */
  private async dirEntries(ino: number): Promise<Map<string, number>> {
    const out = new Map<string, number>()
    if (ino < 1 || ino > this.sb.inodesCount || this.lookupBudget-- <= 0) return out
    const inode = await this.readInode(ino)
    if (!inUse(inode) || (inode.mode & S_IFMT) !== S_IFDIR) return out
    const blocks: number[] = []
    await walkInodes(this.src, [{ inode, dataClass: BlockClass.Directory }], {
      meta: (s, n, cls) => {
        if (cls === BlockClass.Directory) for (let k = 0; k < n && blocks.length < MAX_DIR_BLOCKS; k++) blocks.push(s + k)
      },
      skip: (r) => this.skip(r),
    })
    const bufs = await this.src.readBlocks(blocks)
    for (const b of blocks) this.dirBlockEntries(bufs.get(b) as Buffer, ino, b, (name, child) => out.set(name, child), true)
    return out
  }

  /** The inode a path names, symlinks followed (at most 8), or 0. */
  private async resolve(path: string): Promise<number> {
    let todo = path.split('/').filter(Boolean)
    let dir = ROOT_INO
    let cur = ROOT_INO
    for (let hops = 0; todo.length; ) {
      const name = todo.shift()!
      if (name === '.') continue
      cur = (await this.dirEntries(dir)).get(name) ?? 0
      if (!cur || cur > this.sb.inodesCount) return 0
      const inode = await this.readInode(cur)
      if (!inUse(inode)) return 0
      if ((inode.mode & S_IFMT) === S_IFLNK) {
        const target = ++hops > 8 ? null : await this.symlinkTarget(inode)
        if (target === null) return 0
        todo = [...target.split('/').filter(Boolean), ...todo]
        if (target.startsWith('/')) dir = ROOT_INO
        continue
      }
      if ((inode.mode & S_IFMT) === S_IFDIR) dir = cur
      else if (todo.length) return 0
    }
    return cur
  }

  /**
   * The guest's boot files by name (the paper: "the corresponding kernel
   * image, initial RAM disk image, and init ... can be prefetched"): kernels
   * and initial RAM disks in / (a /boot file system) and /boot, and what
   * /sbin/init names. Only regular files, at most MAX_BOOT_FILES of at most
   * 1 GiB. A directory that cannot be read is a counted skip, not an error.
   */
  private async findBootFiles(): Promise<void> {
    const add = async (ino: number) => {
      if (!ino || ino > this.sb.inodesCount || this.bootInodes.size >= MAX_BOOT_FILES) return
      const inode = await this.readInode(ino)
      if (inUse(inode) && (inode.mode & S_IFMT) === S_IFREG && inode.size <= MAX_BOOT_FILE_BYTES) this.bootInodes.set(ino, inode.generation)
    }
    this.lookupBudget = MAX_DIR_READS
    try {
      const root = await this.dirEntries(ROOT_INO)
      const candidates: [string, number, string][] = [...root].map(([n, i]) => [n, i, '/'])
      const boot = root.get('boot')
      if (boot) candidates.push(...[...(await this.dirEntries(boot))].map(([n, i]): [string, number, string] => [n, i, '/boot/']))
      for (const [name, ino, dir] of candidates) if (BOOT_NAME.test(name)) await add(await this.resolveFrom(ino, dir))
      await add(await this.resolve('/sbin/init'))
    } catch (e) {
      if (!(e instanceof IntrospectError)) throw e
      this.skip(`boot files: ${e.message}`)
    }
  }

  /** An entry of directory `dir` (a path ending in /): its inode, or what it links to (/vmlinuz → boot/vmlinuz-…). */
  private async resolveFrom(ino: number, dir: string): Promise<number> {
    if (ino < 1 || ino > this.sb.inodesCount) return 0
    const inode = await this.readInode(ino)
    if ((inode.mode & S_IFMT) !== S_IFLNK) return ino
    const target = await this.symlinkTarget(inode)
    return target === null ? 0 : this.resolve(target.startsWith('/') ? target : dir + target)
  }

  /** A symlink's target: in the inode (a fast symlink) or its first block; null past 4 KiB or unreadable. */
  private async symlinkTarget(inode: Inode): Promise<string | null> {
    if (inode.size > 4096) return null
    if (inode.size < 60 && !(inode.flags & EXT4_EXTENTS_FL)) return inode.block.toString('utf8', 0, inode.size)
    const blocks: number[] = []
    await walkInodes(this.src, [{ inode, dataClass: BlockClass.Symlink }], { meta: (s) => blocks.push(s), skip: (r) => this.skip(r) })
    if (!blocks.length) return null
    return (await this.r.read(blocks[0] * this.sb.blockSize, this.sb.blockSize)).toString('utf8', 0, inode.size)
  }

  /** Path of an inode, from a parent map built once from every directory (like debugfs ncheck). */
  private async pathOf(ino: number): Promise<string> {
    if (ino === ROOT_INO) return '/'
    if (!this.parents) {
      const parents = new Map<number, { parent: number; name: string }>()
      const dirs: WalkTarget[] = []
      await this.forEachInode((i) => {
        if ((i.mode & S_IFMT) === S_IFDIR) dirs.push({ inode: i, dataClass: BlockClass.Directory })
      })
      const blocksOf: [number, number][] = []
      const src = new CoalescingReader(this.r, this.sb.blockSize, this.sb.blocksCount, 4 << 20, 4)
      await walkInodes(src, dirs, { meta: (s, n, cls, dino) => cls === BlockClass.Directory && blocksOf.push([s, dino]) && n > 1 && blocksOf.push(...Array.from({ length: n - 1 }, (_, k) => [s + k + 1, dino] as [number, number])), skip: () => undefined })
      const bufs = await src.readBlocks(blocksOf.map(([b]) => b))
      for (const [b, dino] of blocksOf) {
        this.dirBlockEntries(bufs.get(b) as Buffer, dino, b, (name, child) => {
          if (!parents.has(child)) parents.set(child, { parent: dino, name })
        })
      }
      this.parents = parents
    }
    const parts: string[] = []
    let cur = ino
    for (let depth = 0; cur !== ROOT_INO && depth < 4096; depth++) {
      const p = this.parents.get(cur)
      if (!p) return ''
      parts.unshift(p.name)
      cur = p.parent
    }
    return '/' + parts.join('/')
  }

  /**
   * The map changes one written run of whole fs blocks implies. Call it
   * BEFORE the bytes reach the Reader: the previous content is read from it
   * to diff against (nothing is cached per block).
   */
  update(fsBlock: number, bytes: Buffer): Promise<ExtChange[]> {
    return this.serial(() => this.updateNow(fsBlock, bytes))
  }

  private async updateNow(fsBlock: number, bytes: Buffer): Promise<ExtChange[]> {
    const sb = this.sb
    const bs = sb.blockSize
    const changes: ExtChange[] = []
    const setClass = (start: number, count: number, to: BlockClass) => {
      for (const [s, c, from] of [...this.classRuns(start, count)]) {
        if (from === to) continue
        this.map.set(s, c, to)
        changes.push({ fsBlock: s, count: c, from, to })
      }
    }
    // Every block of this call, for walks that reach one before the loop does (a write covering
    // an inode-table block and the new extent block it points to, in either order).
    const overlay = new Map<number, Buffer>()
    for (let k = 0; (k + 1) * bs <= bytes.length && fsBlock + k < sb.blocksCount; k++) overlay.set(fsBlock + k, bytes.subarray(k * bs, (k + 1) * bs))
    for (let k = 0; k * bs < bytes.length; k++) {
      const block = fsBlock + k
      const nb = bytes.subarray(k * bs, (k + 1) * bs)
      if (nb.length < bs || block >= sb.blocksCount) break
      const cls = this.classOf(block)
      if (cls === BlockClass.Directory || cls === BlockClass.InodeTable) this.parents = null
      const pendingHome = this.pendingJournal.get(block)
      if (pendingHome !== undefined) {
        this.pendingJournal.delete(block)
        const guess = sniffClass(nb, sb)
        if (guess !== null && this.classOf(pendingHome) === BlockClass.Data) setClass(pendingHome, 1, guess)
      }
      if (cls === BlockClass.InodeTable) await this.updateInodeBlock(block, nb, setClass, overlay)
      else if (cls === BlockClass.Indirect || cls === BlockClass.ExtentTree) {
        const owner = this.mappingOwner.get(block)
        if (owner !== undefined && owner !== RESIZE_INO) {
          // Re-walk the owner with the new mapping block in place of the old.
          const inode = await this.readInode(owner, overlay)
          await this.rewalk(inode, inode, setClass, overlay)
        }
      } else if (cls === BlockClass.Journal) {
        // The kernel sets jbd2 features (64bit, csum v3: tag sizes) in the journal superblock at mount.
        if (this.journal && this.journal.extents[0]?.start === block && this.journal.extents[0].logical === 0) {
          const js = parseJournalSuperblock(nb)
          if (js) this.journal = { ...this.journal, ...js }
          continue
        }
        const homes = jbd2HomeBlocks(nb, block, this.journal)
        if (homes) {
          for (const [journalBlock, home] of homes) {
            if (home > 0 && home < sb.blocksCount) this.pendingJournal.set(journalBlock, home)
            else this.skip(`journal descriptor at block ${block}: home block ${home} is outside the file system`)
          }
          for (const k of this.pendingJournal.keys()) {
            if (this.pendingJournal.size <= MAX_PENDING_JOURNAL) break
            this.pendingJournal.delete(k)
          }
        }
      } else if (cls === BlockClass.GroupDescriptor) {
        this.updateDescriptors(block, nb, setClass)
      }
      // Bitmap writes change no class: a block the guest frees stops being meta-data when the
      // inode-table write that dropped it is diffed, and a newly allocated one becomes meta-data
      // when the inode, mapping block or journal descriptor that names it is written.
    }
    return changes
  }

  private *classRuns(start: number, count: number): IterableIterator<Run> {
    let cur = start
    for (const [s, c, k] of this.map.runsIn(start, count)) {
      if (s > cur) yield [cur, s - cur, BlockClass.Data]
      yield [s, c, k]
      cur = s + c
    }
    if (cur < start + count) yield [cur, start + count - cur, BlockClass.Data]
  }

  private async updateInodeBlock(block: number, nb: Buffer, setClass: (s: number, c: number, to: BlockClass) => void, overlay: Map<number, Buffer>): Promise<void> {
    const sb = this.sb
    const bs = sb.blockSize
    const old = await this.r.read(block * bs, bs)
    let g = -1
    for (let i = 0; i < sb.groupCount; i++) if (block >= this.inodeTable[i] && block < this.inodeTable[i] + this.itableBlocks) g = i
    if (g < 0) return
    const first = g * sb.inodesPerGroup + ((block - this.inodeTable[g]) * bs) / sb.inodeSize + 1
    for (let n = 0; n < bs / sb.inodeSize; n++) {
      const o = n * sb.inodeSize
      if (old.subarray(o, o + 0x80).equals(nb.subarray(o, o + 0x80))) continue
      const before = parseInode(old, o, first + n)
      const after = parseInode(nb, o, first + n)
      await this.rewalk(before, after, setClass, overlay)
    }
  }

  /** Meta-data blocks `before` had and `after` lacks go back to data; `after`'s get their class. */
  private async rewalk(before: Inode, after: Inode, setClass: (s: number, c: number, to: BlockClass) => void, override?: Map<number, Buffer>): Promise<void> {
    const collect = async (inode: Inode, useOverride: boolean): Promise<Run[]> => {
      const runs: Run[] = []
      const t = this.target(inode, runs)
      const base = this.src
      const src = {
        blockSize: base.blockSize,
        blocksCount: base.blocksCount,
        readBlocks: async (blocks: number[]) => {
          const m = await base.readBlocks(blocks.filter((b) => !(useOverride && override?.has(b))))
          if (useOverride && override) for (const [b, buf] of override) if (blocks.includes(b)) m.set(b, buf)
          return m
        },
      }
      if (t) await walkInodes(src, [t], { meta: (s, c, cls) => runs.push([s, c, cls]), skip: (r) => this.skip(r) })
      return runs
    }
    const oldRuns = inUse(before) ? await collect(before, false) : []
    const newRuns = inUse(after) ? await collect(after, true) : []
    // A freed boot file leaves the set, and so does its inode reused by a new file (another generation).
    if (this.bootInodes.has(after.ino) && (!inUse(after) || after.generation !== this.bootInodes.get(after.ino))) this.bootInodes.delete(after.ino)
    const oldAcl = inUse(before) ? before.fileAcl : 0
    const newAcl = inUse(after) ? after.fileAcl : 0
    if (oldAcl !== newAcl) {
      this.addXattrRef(oldAcl, -1)
      this.addXattrRef(newAcl, 1)
    }
    const keep = ExtentMap.fromRuns(newRuns)
    // Only what the inode really held goes back to data, and the file system's own structures never
    // change hands: an old inode read from garbage (an unused slot) or a corrupt new one cannot
    // take an inode table or a bitmap with it.
    for (const [s, c, cls] of oldRuns) {
      if (s === oldAcl && c === 1 && this.xattrRefs.has(s)) continue // another inode still shares this xattr block
      for (const [bs, bc, k] of this.classRunsOf(keep, s, c)) {
        if (k !== BlockClass.Data) continue
        for (const [s2, c2, now] of [...this.classRuns(bs, bc)]) if (now === cls && !STATIC_CLASSES.has(now)) setClass(s2, c2, BlockClass.Data)
      }
    }
    for (const [s, c, cls] of newRuns) {
      for (const [s2, c2, now] of [...this.classRuns(s, c)]) {
        if (!STATIC_CLASSES.has(now)) setClass(s2, c2, cls)
        else if (now !== cls) this.skip(`inode ${after.ino}: block ${s2} (+${c2}) is the file system's own ${BlockClass[now]}, not its ${BlockClass[cls]}`)
      }
      if (cls === BlockClass.Indirect || cls === BlockClass.ExtentTree) this.mappingOwner.set(s, after.ino)
    }
  }

  private *classRunsOf(m: ExtentMap, start: number, count: number): IterableIterator<Run> {
    let cur = start
    for (const [s, c, k] of m.runsIn(start, count)) {
      if (s > cur) yield [cur, s - cur, BlockClass.Data]
      yield [s, c, k]
      cur = s + c
    }
    if (cur < start + count) yield [cur, start + count - cur, BlockClass.Data]
  }

  private updateDescriptors(block: number, nb: Buffer, setClass: (s: number, c: number, to: BlockClass) => void): void {
    const sb = this.sb
    const perBlock = sb.blockSize / sb.descSize
    // Only the primary copy (right after the primary superblock, or a meta_bg group's first copy) defines the layout.
    const metaBg = (sb.incompat & INCOMPAT.meta_bg) !== 0
    let k = block - (sb.firstDataBlock + 1)
    if (metaBg && k >= sb.firstMetaBg) {
      const g0 = Math.floor((block - sb.firstDataBlock) / sb.blocksPerGroup)
      if (g0 % perBlock !== 0) return
      k = g0 / perBlock
    }
    if (k < 0 || k >= gdtBlocks(sb)) return
    for (let i = 0; i < perBlock; i++) {
      const g = k * perBlock + i
      if (g >= sb.groupCount) break
      const before = [this.blockBitmap[g], this.inodeBitmap[g], this.inodeTable[g]]
      this.parseDescriptor(g, nb, i * sb.descSize, sb.descSize >= 64)
      const after = [this.blockBitmap[g], this.inodeBitmap[g], this.inodeTable[g]]
      if (before.every((v, j) => v === after[j])) continue
      setClass(before[0], 1, BlockClass.Data)
      setClass(before[1], 1, BlockClass.Data)
      setClass(before[2], this.itableBlocks, BlockClass.Data)
      const runs: Run[] = []
      this.addGroup(g, runs)
      for (const [s, c, cls] of runs) setClass(s, c, cls)
    }
  }
}
