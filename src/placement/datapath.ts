// The datapath of a mount (issue 5): which files are images, their routers,
// background introspection, the live map, destage, warm start and stats.
// One RAM cache and one SSD store serve every image of the mount.
//
// Life of an image: the first open of a file that probes as a disk image (or
// that the SSD store already knows) attaches it: an own read-write fd, a
// registration in the SSD store by identity, and a router that handles every
// block as data (except blocks with dirty copies) until the map is ready. The
// scan runs in the background through the router itself (it sees redirected
// writes). Writes that touch meta-data blocks first feed the live map
// (container applyWrite, ext update) and are then routed under the new
// classes. The image stays attached after its last close (the map stays warm);
// that last close starts a full destage so the HDD file is whole while no VM
// has it open.

import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { BlockClass, className, isFastData, isFastTier, isMetadata, placementRank, priorityOf } from '../introspect/classes'
import { probeImage } from '../introspect/container'
import type { DiskFile } from '../introspect/container/disk'
import { IntrospectError, IntrospectIOError } from '../introspect/errors'
import { inspectImage, type Inspection } from '../introspect/inspect'
import { ExtentMap } from '../introspect/map/extent-map'
import { FileReader } from '../introspect/reader'
import { log } from '../log'
import { sys } from '../native/sys'
import { BLOCK, RamCache, type RamMirror } from '../store/ram'
import { SsdStore } from '../store/ssd'
import { ImageRouter, type ClassStats, type RouterCounters } from './router'
import { EmulatedHdd } from '../store/hdd-device'
import type { HddModel } from '../store/hdd-model'

export interface DatapathOptions {
  /** Real path of the store directory. */
  storeRoot: string
  ramBytes: number
  ssdPath: string
  /** Cap of the SSD store in bytes (blocks held, clean and dirty). */
  ssdMaxBytes: number
  /** Globs (relative to the store) of files never introspected. */
  exclude: string[]
  /** Background destage: blocks per tick, tick interval, and how long guest I/O must have paused. */
  destageBlocks?: number
  destageIntervalMs?: number
  destageIdleMs?: number
  /** 'conventional': benchmark configuration (b), a plain LRU of every block with read-ahead; no scans, no SSD. */
  cacheMode?: 'introspect' | 'conventional'
  /** The emulated disk every image file is on (--emulate-hdd), or none. */
  hdd?: HddModel | null
  /** Data of regular files up to this many bytes is placed with the meta-data (--small-files; default 0: off). */
  smallFileBytes?: number
  /** The data of the guests' boot files (kernels, initial RAM disks, init; found by name) is placed with the meta-data (--boot-files; default false). */
  bootFiles?: boolean
  /**
   * Writes to blocks the guest has newly allocated are held on the SSD store
   * while it holds fewer unwritten bytes than this (--new-data; default 0: off).
   */
  newDataBytes?: number
}

/** Files smaller than this are never taken for disk images. */
export const MIN_IMAGE_BYTES = 1 << 20
/** The extended attribute a VM's owner sets to keep an image out of introspection. */
export const OPT_OUT_XATTR = 'user.vmdi.introspect'
/** Scans retried when the guest wrote meta-data while they ran. */
const MAX_SCAN_TRIES = 3
/** Blocks written during a scan remembered for the retry decision (past this: retry). */
const MAX_SCAN_WRITES = 1 << 16
/** What the scan read and the preload takes instead of reading it again: at most this many bytes (512 MiB). */
const SCAN_KEEP_MAX = 512 << 20
/** Largest preload read, in blocks (4 MiB). */
const PRELOAD_SPAN = 1024
/** Preload runs at most this many blocks apart are read as one request (256 KiB). */
const PRELOAD_GAP = 64
/** How often the blocks the binding served from RAM are counted and touched in the LRU. */
const NATIVE_DRAIN_MS = 25

export type ScanState = 'off' | 'pending' | 'running' | 'done' | 'failed'

export class ImageRefused extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ImageRefused'
  }
}

export interface ImageEntry {
  /** Path relative to the store. */
  rel: string
  abs: string
  key: string
  fd: number
  id: number
  router: ImageRouter
  opens: number
  map: ExtentMap
  scan: { state: ScanState; ms: number; tries: number; error: string | null; format: string | null; mapBytes: number; warm: boolean; restored: boolean }
  ins: Inspection | null
  /** Writes feeding the live map, one at a time. */
  updating: Promise<void>
  /** File blocks written while a scan runs (null: no scan running). */
  scanWrites: Set<number> | null
  unlinked: boolean
  /** Saved file-system states from the last clean unmount, used by the first scan (then dropped). */
  restore: Map<number, Buffer> | null
  /** The file's mtime and size when its last handle closed and its destage finished (a reopen checks them). */
  closedStat: { mtimeNs: bigint; size: number } | null
}

function globToRegExp(glob: string): RegExp {
  let re = ''
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]
    if (c === '*') {
      if (glob[i + 1] === '*') {
        re += '.*'
        i++
        if (glob[i + 1] === '/') i++
      } else re += '[^/]*'
    } else if (c === '?') re += '[^/]'
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&')
  }
  return new RegExp(`^${re}$`)
}

export class Datapath {
  readonly ram: RamCache
  readonly ssd: SsdStore
  private readonly byKey = new Map<string, ImageEntry>()
  private readonly exclude: RegExp[]
  private readonly capBlocks: number
  /** New data is held on the SSD store while its dirty blocks are fewer than this (at most half the cap). */
  private readonly newDataBlocks: number
  private scanQueue: Promise<void> = Promise.resolve()
  private timer: NodeJS.Timeout | null = null
  private closed = false
  /** The SSD store's failover (what it held written to the HDD files), once it has failed. */
  private failover: Promise<void> | null = null
  private destaging = false
  private drainNative: ((out: Float64Array) => number) | null = null
  private drainTimer: NodeJS.Timeout | null = null
  private readonly drained = new Float64Array(8192)
  /** Images refused at attach (identity conflict), by real path: the message. */
  readonly refused = new Map<string, string>()

  constructor(private readonly opts: DatapathOptions) {
    this.ram = new RamCache(opts.ramBytes)
    this.ssd = SsdStore.open(opts.ssdPath)
    this.capBlocks = Math.floor(opts.ssdMaxBytes / BLOCK)
    this.newDataBlocks = Math.min(Math.floor(this.capBlocks / 2), Math.floor((opts.newDataBytes ?? 0) / BLOCK))
    this.exclude = opts.exclude.map(globToRegExp)
    // Called for every batch that fails: the failover runs once.
    this.ssd.onFailure = (e) => {
      this.failover ??= this.ssdFailed(e)
    }
    this.timer = setInterval(() => void this.tick(), opts.destageIntervalMs ?? 250)
    this.timer.unref()
  }

  images(): ImageEntry[] {
    return [...this.byKey.values()]
  }

  private heldBlocks(): number {
    let n = 0
    for (const e of this.byKey.values()) n += e.router.present.size
    return n
  }

  private dirtyTotal(): number {
    let n = 0
    for (const e of this.byKey.values()) n += e.router.dirty.size
    return n
  }

  /** Meta-data writes may be redirected: the store works and its dirty blocks are under the cap. */
  private canRedirect(): boolean {
    return !this.ssd.failed && !this.closed && this.dirtyTotal() < this.capBlocks
  }

  private excluded(rel: string): boolean {
    return this.exclude.some((r) => r.test(rel))
  }

  /**
   * Called on every open of a regular file of the store: the image entry that
   * serves it, or null for plain pass-through. Throws ImageRefused for an
   * image in conflict with the store.
   */
  async attach(rel: string, abs: string): Promise<ImageEntry | null> {
    if (this.closed) return null
    let st: fs.Stats
    try {
      st = fs.lstatSync(abs)
    } catch {
      return null
    }
    if (!st.isFile()) return null
    const key = `${st.dev}:${st.ino}`
    const known = this.byKey.get(key)
    if (known && !known.unlinked) {
      if (known.opens === 0 && known.closedStat && !sameStat(known.closedStat, abs)) {
        // Written on the HDD behind the mount while no handle had it open: start afresh.
        log.warn(`image ${rel}: changed on the HDD while closed (mtime or size): its cached blocks and map are dropped and it is scanned again`)
        await this.forget(known, false)
        await this.ssd.commit().catch(() => undefined)
      } else {
        known.opens++
        known.closedStat = null
        return known
      }
    }
    if (this.refused.has(abs)) throw new ImageRefused(this.refused.get(abs)!)
    if (this.excluded(rel)) return null
    const storedId = this.ssd.imageId(abs)
    if (storedId === null) {
      if (st.size < MIN_IMAGE_BYTES || optedOut(abs)) return null
      let format: string | null
      try {
        format = await probeImage(abs)
      } catch (e) {
        log.warn(`image ${rel}: probe failed (${(e as Error).message}): served as plain pass-through`)
        return null
      }
      if (!format) return null
    } else if (optedOut(abs)) {
      log.info(`image ${rel}: ${OPT_OUT_XATTR}=off, but the SSD store holds blocks of it: served through the datapath until they are destaged`)
    }
    // Another open may have attached it while we probed.
    const again = this.byKey.get(key)
    if (again && !again.unlinked) {
      again.opens++
      return again
    }
    let fd: number
    try {
      fd = fs.openSync(abs, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW)
    } catch (e) {
      log.warn(`image ${rel}: cannot open it read-write for the datapath (${(e as Error).message}): served as plain pass-through`)
      return null
    }
    const head = Buffer.alloc(BLOCK)
    fs.readSync(fd, head, 0, BLOCK, 0)
    const reg = this.ssd.registerImage({ path: abs, dev: st.dev, ino: st.ino, size: st.size, signature: signatureOf(head) })
    if (reg.status === 'conflict') {
      fs.closeSync(fd)
      const msg =
        `image ${rel} changed on the HDD behind the SSD store's back while the store holds ${reg.dirtyBlocks} unwritten block(s) of it; ` +
        `refused until resolved: unmount, then run "vmdi-fuse recover --apply ${abs}" (write the store's blocks over it) or "vmdi-fuse recover --discard ${abs}" (drop them), with --ssd ${this.opts.ssdPath}`
      this.refused.set(abs, msg)
      log.error(msg)
      throw new ImageRefused(msg)
    }
    // The clean-unmount record: mtime and size after our last write, and the file systems' states.
    let restore: Map<number, Buffer> | null = null
    if (reg.clean) {
      this.ssd.saveCleanRecord(reg.id, null) // a crash from here on leaves no record
      const rec = unpackClean(reg.clean)
      const now = fs.statSync(abs, { bigint: true })
      if (!rec || rec.mtimeNs !== now.mtimeNs || rec.size !== Number(now.size)) {
        if (reg.dirtyBlocks === 0) {
          this.ssd.resetImage(reg.id)
          reg.map = null
          log.info(`image ${rel}: changed on the HDD since the last clean unmount (mtime or size): store copies dropped`)
        }
      } else restore = rec.states
    }
    let map = new ExtentMap()
    if (reg.map) {
      try {
        map = ExtentMap.deserialize(reg.map).map
      } catch (e) {
        log.warn(`image ${rel}: saved map unreadable (${(e as Error).message}): scanning afresh`)
      }
    }
    const entry: ImageEntry = {
      rel,
      abs,
      key,
      fd,
      id: reg.id,
      router: null as unknown as ImageRouter,
      opens: 1,
      map,
      scan: { state: 'pending', ms: 0, tries: 0, error: null, format: null, mapBytes: 0, warm: false, restored: false },
      ins: null,
      updating: Promise.resolve(),
      scanWrites: null,
      unlinked: false,
      restore,
      closedStat: null,
    }
    const conventional = this.opts.cacheMode === 'conventional'
    entry.router = new ImageRouter(fd, reg.id, this.ram, this.ssd, (b) => entry.map.classOf(b), {
      canRedirect: () => this.canRedirect() && !conventional,
      device: this.opts.hdd ? new EmulatedHdd(fd, this.opts.hdd) : undefined,
      conventional,
      onBlockZero: async (bytes) => {
        this.ssd.setSignature(entry.id, signatureOf(bytes))
        // A store failing now is abandoned (its identity record with it): the guest's write goes on.
        await this.ssd.commitUnlessFailed()
      },
      ssdFailover: () => this.failover ?? Promise.resolve(),
    })
    if (!reg.clean && reg.status === 'same') {
      // No clean-unmount record: the last mount ended in a crash (or the image was never
      // closed cleanly). Another tool may have written the file since; only its first 4 KiB are
      // checked, so clean copies are not trusted. Dirty ones are the latest writes: kept.
      const r = entry.router
      let dropped = 0
      for (const b of [...r.present]) {
        if (r.dirty.has(b)) continue
        this.ssd.delete(reg.id, b)
        r.present.delete(b)
        dropped++
      }
      if (dropped) log.info(`image ${rel}: no clean-unmount record (the last mount did not end cleanly): ${dropped} clean cached block(s) dropped, ${r.dirty.size} unwritten block(s) kept`)
    }
    this.byKey.set(key, entry)
    log.info(
      `image ${rel}: attached (${reg.status === 'same' ? `known to the SSD store${reg.map ? ', saved map used at once' : ''}` : reg.status === 'reset' ? 'changed since last seen: store copies dropped' : 'new'}` +
        `${reg.dirtyBlocks ? `, ${reg.dirtyBlocks} dirty block(s) to destage` : ''})`,
    )
    if (conventional) {
      entry.scan.state = 'off'
      entry.map = new ExtentMap()
    } else this.scanQueue = this.scanQueue.then(() => this.scan(entry))
    return entry
  }

  private openFor(entry: ImageEntry) {
    return async (p: string): Promise<DiskFile> => (p === entry.abs ? new RouterFile(entry, () => this.closed) : FileReader.open(p))
  }

  private async scan(entry: ImageEntry): Promise<void> {
    if (this.closed || entry.unlinked) return
    const t0 = Date.now()
    entry.scan.state = 'running'
    for (;;) {
      entry.scan.tries++
      entry.scanWrites = new Set()
      let ins: Inspection
      // What the scan reads is kept for the preload (it is most of the meta-data); writes drop their copies.
      entry.router.keepScanReads(SCAN_KEEP_MAX)
      try {
        ins = await inspectImage(entry.abs, { storeRoot: this.opts.storeRoot, openFile: this.openFor(entry), restore: entry.restore ?? undefined, smallFileBytes: this.opts.smallFileBytes ?? 0, bootFiles: this.opts.bootFiles ?? false })
      } catch (e) {
        entry.scanWrites = null
        entry.router.dropScanReads()
        entry.scan.state = 'failed'
        entry.scan.ms = Date.now() - t0
        entry.scan.error = (e as Error).message
        entry.map = new ExtentMap()
        const why = e instanceof IntrospectError ? e.message : `unexpected error: ${(e as Error).stack ?? e}`
        log.warn(`image ${entry.rel}: not introspected, every block handled as data: ${why}`)
        return
      }
      const fileMap = ins.fileMaps?.find((m) => m.path === entry.abs)?.map ?? new ExtentMap()
      const writes = entry.scanWrites
      entry.scanWrites = null
      entry.restore = null // a retry scans
      const raced = writes.size >= MAX_SCAN_WRITES || [...writes].some((b) => isMetadata(fileMap.classOf(b)) || isMetadata(entry.map.classOf(b)))
      if (raced && entry.scan.tries < MAX_SCAN_TRIES && !this.closed) {
        await ins.close().catch(() => undefined)
        log.info(`image ${entry.rel}: the guest wrote meta-data during the scan: scanning again`)
        continue
      }
      // Blocks that stopped being meta-data since the saved map lose their clean copies.
      for (const [s, c, cls] of entry.map.runs()) {
        for (let b = s; b < s + c; b++) if (!isFastTier(fileMap.classOf(b))) entry.router.reclassified(b, 1, cls, BlockClass.Data)
      }
      await entry.ins?.close().catch(() => undefined)
      entry.map = fileMap
      entry.ins = ins
      entry.scan.state = 'done'
      entry.scan.restored = ins.restored.length > 0 && ins.restored.length === ins.filesystems.length
      entry.restore = null
      entry.scan.ms = Date.now() - t0
      entry.scan.format = `${ins.report.format}/${ins.report.subformat}`
      entry.scan.mapBytes = fileMap.memoryBytes()
      if (raced) log.warn(`image ${entry.rel}: the guest kept writing meta-data during ${MAX_SCAN_TRIES} scans: the map may miss some of it until those blocks are written again`)
      let meta = 0
      let small = 0
      let boot = 0
      for (const [cls, n] of fileMap.countByClass()) {
        if (isMetadata(cls)) meta += n
        else if (cls === BlockClass.SmallFile) small += n
        else if (cls === BlockClass.BootFile) boot += n
      }
      log.info(
        `image ${entry.rel}: ${entry.scan.restored ? 'restored from its clean-unmount record (no inode walk)' : 'scanned'} in ${entry.scan.ms} ms (${entry.scan.format}, ${ins.report.partitions.length} volume(s), ` +
          `${ins.filesystems.map((f) => f.fs.info.type).join('+') || 'no ext file system'}): ${meta} meta-data block(s)${small ? `, ${small} block(s) of small files' data` : ''}${boot ? `, ${boot} block(s) of boot files' data (${ins.filesystems.reduce((a, f) => a + f.fs.bootFileInodes.length, 0)} file(s))` : ''} of ${Math.ceil(entry.router.fileSize / BLOCK)}`,
      )
      if (!this.ssd.failed) this.ssd.saveMap(entry.id, fileMap.serialize(BLOCK))
      await this.preload(entry)
      entry.scan.warm = true
      return
    }
  }

  /**
   * Warm start: the meta-data blocks go to the SSD store (and RAM within
   * budget) once. First those the scan already read (kept copies, adopted
   * highest class priority first); then RAM gets the blocks the store already
   * held (a restart: point reads from the store, highest priority first);
   * then the rest from the HDD in one sweep in file order,
   * runs less than PRELOAD_GAP blocks apart read as one request (on a disk a
   * seek costs more than the gap's transfer). RAM never evicts a higher class
   * priority for a lower one, so it ends up holding what every lookup walks,
   * whatever the order. The journal is not preloaded: it is written all the
   * time and read only at recovery, and its blocks are cached as they are
   * written. Neither is inode-table space no inode uses yet (nothing to read;
   * it is cached when written). Then, in a second sweep, small files' data
   * (--small-files), which only reads while the guest pauses (as the
   * background destage does): it can be long, and is worth less than the
   * guest's own I/O.
   */
  private async preload(entry: ImageEntry): Promise<void> {
    const unused = new ExtentMap()
    const ins = entry.ins
    if (ins) {
      for (const { volume, fs: efs } of ins.filesystems) {
        const bs = efs.info.blockSize
        for (const [s, c] of efs.unusedInodeTableRuns()) {
          for (const seg of volume.segments) {
            const lo = Math.max(s * bs, seg.volumeOffset)
            const hi = Math.min((s + c) * bs, seg.volumeOffset + seg.length)
            for (let g = seg.diskOffset + (lo - seg.volumeOffset); g < seg.diskOffset + (hi - seg.volumeOffset); ) {
              const m = ins.disk.mapGuest(g)
              const n = Math.min(m.length, seg.diskOffset + (hi - seg.volumeOffset) - g)
              // Whole file blocks only: a block shared with used space is still read.
              if (m.kind === 'data' && m.file === 0) {
                const b0 = Math.ceil(m.fileOffset / BLOCK)
                const b1 = Math.floor((m.fileOffset + n) / BLOCK)
                if (b1 > b0) unused.set(b0, b1 - b0, BlockClass.InodeTable)
              }
              g += Math.max(1, n)
            }
          }
        }
      }
    }
    const want = (cls: BlockClass, b: number) => cls !== BlockClass.Journal && unused.classOf(b) === BlockClass.Data
    const router = entry.router
    if (this.closed || entry.unlinked || !this.canRedirect()) {
      router.dropScanReads()
      return
    }
    const adopted = router.adoptScanReads(want, this.capBlocks - this.heldBlocks())
    // A restart with a warm SSD store: RAM gets what it held, from the store, not the HDD.
    const t0 = Date.now()
    const refilled = await router.refillRam(want, () => this.closed || entry.unlinked)
    if (refilled) log.info(`image ${entry.rel}: warm start: ${refilled} block(s) copied to RAM from the SSD store in ${Date.now() - t0} ms (meta-data first, then small and boot files' data)`)
    // What is left to read: wanted blocks the SSD store does not hold yet; meta-data first (what
    // lookups need), then small and boot files' data, each in one sweep in file order.
    const plan = (pick: (cls: BlockClass) => boolean) => {
      const spans: [number, number][] = []
      const add = (s: number, c: number) => {
        const last = spans[spans.length - 1]
        if (last && s - (last[0] + last[1]) <= PRELOAD_GAP && s + c - last[0] <= PRELOAD_SPAN) last[1] = s + c - last[0]
        else if (c > PRELOAD_SPAN) for (let b = s; b < s + c; b += PRELOAD_SPAN) spans.push([b, Math.min(PRELOAD_SPAN, s + c - b)])
        else spans.push([s, c])
      }
      let missing = 0
      for (const [s0, c0, cls] of entry.map.runs()) {
        if (cls === BlockClass.Journal || !pick(cls)) continue
        let runAt = -1
        for (let b = s0; b <= s0 + c0; b++) {
          const need = b < s0 + c0 && !router.present.has(b) && unused.classOf(b) === BlockClass.Data
          if (need) {
            missing++
            if (runAt < 0) runAt = b
          } else if (runAt >= 0) {
            add(runAt, b - runAt)
            runAt = -1
          }
        }
      }
      return { spans, missing }
    }
    const meta = plan(isMetadata)
    if (adopted) log.info(`image ${entry.rel}: warm start: ${adopted} meta-data block(s) kept from the scan's reads, ${meta.missing} to read`)
    const idleMs = this.opts.destageIdleMs ?? 200
    const sweep = async (spans: [number, number][], pick: (cls: BlockClass) => boolean, whenIdle: boolean): Promise<boolean> => {
      for (const [s, c] of spans) {
        while (whenIdle && !this.closed && Date.now() - router.lastGuestIo < idleMs) await new Promise((r) => setTimeout(r, idleMs))
        if (this.closed || entry.unlinked || !this.canRedirect() || this.heldBlocks() >= this.capBlocks) return false
        await router.preload(s, c, (cls, b) => pick(cls) && want(cls, b))
      }
      return true
    }
    if (!(await sweep(meta.spans, isMetadata, false))) return
    const small = plan(isFastData)
    if (small.missing === 0) return
    const t1 = Date.now()
    const before = router.counters.preloaded
    const done = await sweep(small.spans, isFastData, true)
    const n = router.counters.preloaded - before
    log.info(`image ${entry.rel}: small and boot files: ${n} data block(s) (${(n / 256).toFixed(1)} MiB) copied to the SSD store in ${Date.now() - t1} ms${done ? '' : ' (stopped early: unmount, SSD store full or failed)'}`)
  }

  // --- the request path ------------------------------------------------------

  read(entry: ImageEntry, buf: Buffer, len: number, pos: number): Promise<number> {
    return entry.router.read(buf, len, pos)
  }

  async write(entry: ImageEntry, buf: Buffer, len: number, pos: number): Promise<number> {
    const first = Math.floor(pos / BLOCK)
    const last = Math.floor((pos + len - 1) / BLOCK)
    if (entry.scanWrites) for (let b = first; b <= last && entry.scanWrites.size < MAX_SCAN_WRITES; b++) entry.scanWrites.add(b)
    let touchesMeta = false
    if (entry.ins && len > 0) {
      for (let b = first; b <= last && !touchesMeta; b++) touchesMeta = isMetadata(entry.map.classOf(b))
      if (touchesMeta) {
        // The live map learns from the write before it lands (it diffs against the current bytes).
        const bytes = Buffer.from(buf.subarray(0, len))
        const run = entry.updating.then(() => this.learn(entry, pos, bytes))
        entry.updating = run.catch(() => undefined)
        await run.catch((e) => log.warn(`image ${entry.rel}: live map update at byte ${pos} failed: ${(e as Error).message}`))
      }
    }
    // New data: a write of file data only (small and boot files' data is routed by its class anyway).
    let fileData = !touchesMeta && entry.ins !== null && len > 0
    for (let b = first; b <= last && fileData; b++) fileData = !isFastData(entry.map.classOf(b))
    const absorb = fileData && this.dirtyTotal() < this.newDataBlocks && (await this.newAllocation(entry, pos, len))
    return entry.router.write(buf, len, pos, absorb)
  }

  /**
   * Whether every byte of image bytes [pos, pos+len) lies in a scanned file
   * system, in blocks its on-disk bitmaps show free: data the guest has just
   * allocated (its bitmaps reach their home blocks only at a checkpoint). A
   * bitmap that cannot be read answers no: the write goes to the HDD.
   */
  private async newAllocation(entry: ImageEntry, pos: number, len: number): Promise<boolean> {
    const ins = entry.ins
    if (!ins) return false
    let covered = 0
    try {
      for (const p of fsPieces(ins, pos, len, false)) {
        const bs = p.efs.info.blockSize
        const f0 = Math.floor(p.vlo / bs)
        if (!(await p.efs.unallocated(f0, Math.ceil(p.vhi / bs) - f0))) return false
        covered += p.vhi - p.vlo
      }
    } catch (e) {
      log.debug(`image ${entry.rel}: free-space check at byte ${pos} failed: ${(e as Error).message}`)
      return false
    }
    return covered === len
  }

  /** The map changes a write implies: container tables, then each ext file system it touches. */
  private async learn(entry: ImageEntry, pos: number, bytes: Buffer): Promise<void> {
    const ins = entry.ins
    if (!ins) return
    const touched = new Set<number>()
    const fileBlocksOfGuest = (g: number, n: number) => {
      for (let at = g; at < g + n; ) {
        const m = ins.disk.mapGuest(at)
        const k = Math.min(m.length, g + n - at)
        if (m.kind === 'data' && m.file === 0) {
          for (let b = Math.floor(m.fileOffset / BLOCK); b <= Math.floor((m.fileOffset + k - 1) / BLOCK); b++) touched.add(b)
        }
        at += Math.max(1, k)
      }
    }
    try {
      for (const r of await ins.disk.applyWrite(0, pos, bytes)) fileBlocksOfGuest(r.offset, r.length)
    } catch (e) {
      log.warn(`image ${entry.rel}: container table write at byte ${pos} not understood (${(e as Error).message}): map left as it was`)
    }
    // The file systems this write covers: whole fs blocks of the write's bytes over the current ones
    // (read before the write lands), or the write itself when it covers whole fs blocks.
    for (const p of fsPieces(ins, pos, bytes.length, false)) {
      const { volume, efs } = p
      const bs = efs.info.blockSize
      const fb0 = Math.floor(p.vlo / bs)
      const fb1 = Math.ceil(p.vhi / bs)
      const from = p.at - pos
      const to = from + (p.vhi - p.vlo)
      let whole: Buffer
      if (p.vlo === fb0 * bs && p.vhi === fb1 * bs) whole = bytes.subarray(from, to)
      else {
        whole = Buffer.from(await volumeRead(ins, volume, fb0 * bs, (fb1 - fb0) * bs))
        bytes.copy(whole, p.vlo - fb0 * bs, from, to)
      }
      for (const ch of await efs.update(fb0, whole)) {
        for (const s2 of volume.segments) {
          const clo = Math.max(ch.fsBlock * bs, s2.volumeOffset)
          const chi = Math.min((ch.fsBlock + ch.count) * bs, s2.volumeOffset + s2.length)
          if (chi > clo) fileBlocksOfGuest(s2.diskOffset + (clo - s2.volumeOffset), chi - clo)
        }
      }
    }
    for (const b of touched) {
      const from = entry.map.classOf(b)
      const to = fileBlockClass(ins, b)
      if (from === to) continue
      entry.map.set(b, 1, to)
      entry.router.reclassified(b, 1, from, to)
    }
  }

  // --- names and sizes ---------------------------------------------------------

  release(entry: ImageEntry): void {
    entry.opens = Math.max(0, entry.opens - 1)
    if (entry.opens > 0 || this.closed) return
    if (entry.unlinked) {
      void this.forget(entry)
      return
    }
    // No VM has it open: make the HDD file whole in the background, until it is opened
    // again (then the guest's I/O comes first and the rate-limited tick finishes the job).
    void this.destageAll(entry, () => entry.opens > 0 || this.closed)
      .then(() => {
        if (entry.opens === 0 && entry.router.dirty.size === 0) {
          const st = fs.fstatSync(entry.fd, { bigint: true })
          entry.closedStat = { mtimeNs: st.mtimeNs, size: Number(st.size) }
        }
      })
      .catch((e) => log.error(`image ${entry.rel}: destage after the last close failed: ${(e as Error).message}`))
  }

  entryForPath(abs: string): ImageEntry | null {
    for (const e of this.byKey.values()) if (e.abs === abs && !e.unlinked) return e
    return null
  }

  async truncated(abs: string, size: number): Promise<boolean> {
    const e = this.entryForPath(abs)
    if (e) {
      await e.router.truncate(size)
      return true
    }
    const id = this.ssd.imageId(abs)
    if (id !== null) this.ssd.truncate(id, Math.ceil(size / BLOCK))
    return false
  }

  /** A store path was unlinked (or replaced by a rename): its image forgets its blocks once closed. */
  unlinked(abs: string): void {
    const e = this.entryForPath(abs)
    if (e) {
      e.unlinked = true
      this.refused.delete(abs)
      if (e.opens === 0) void this.forget(e)
      return
    }
    this.refused.delete(abs)
    const id = this.ssd.imageId(abs)
    if (id !== null) this.ssd.forgetImage(id)
  }

  renamed(fromAbs: string, toAbs: string, toRel: string): void {
    this.unlinked(toAbs)
    const e = this.entryForPath(fromAbs)
    this.ssd.renameImage(fromAbs, toAbs)
    if (e) {
      e.abs = toAbs
      e.rel = toRel
    }
    const msg = this.refused.get(fromAbs)
    if (msg) {
      this.refused.delete(fromAbs)
      this.refused.set(toAbs, msg)
    }
  }

  /** Drops an image's entry and RAM blocks; `unlinked`: forgets it in the SSD store too, else only resets its blocks and map there. */
  private async forget(e: ImageEntry, unlinked = true): Promise<void> {
    this.byKey.delete(e.key)
    e.router.dropScanReads()
    await e.updating
    this.ram.dropImage(e.router.image)
    if (unlinked) this.ssd.forgetImage(e.id)
    else this.ssd.resetImage(e.id)
    await e.ins?.close().catch(() => undefined)
    fs.close(e.fd, () => undefined)
    if (unlinked) log.info(`image ${e.rel}: unlinked: its blocks and map are forgotten`)
  }

  // --- destage -----------------------------------------------------------------

  /** Every dirty block of an image back to the HDD file (or until `stop` says so). Returns how many. */
  async destageAll(e: ImageEntry, stop: () => boolean = () => false): Promise<number> {
    let n = 0
    while (!stop()) {
      const k = await e.router.destage(1024)
      if (!k) break
      n += k
    }
    return n
  }

  /** Background work: rate-limited destage while guests pause, the SSD cap. */
  private async tick(): Promise<void> {
    if (this.destaging || this.closed) return
    this.destaging = true
    try {
      const now = Date.now()
      const pressing = this.dirtyTotal() >= this.capBlocks * 0.8
      for (const e of this.byKey.values()) {
        if (!e.router.dirty.size) continue
        if (!pressing && now - e.router.lastGuestIo < (this.opts.destageIdleMs ?? 200)) continue
        await e.router.destage(this.opts.destageBlocks ?? 256)
      }
      if (this.heldBlocks() > this.capBlocks) this.evictClean(this.heldBlocks() - Math.floor(this.capBlocks * 0.9))
    } catch (e) {
      log.error(`background destage failed: ${(e as Error).message}`)
    } finally {
      this.destaging = false
    }
  }

  /** Drops clean SSD copies, lowest class priority first, until `n` are gone. */
  private evictClean(n: number): void {
    for (let p = 0; p <= 4 && n > 0; p++) {
      for (const e of this.byKey.values()) {
        for (const b of [...e.router.present]) {
          if (n <= 0) break
          if (e.router.dirty.has(b) || priorityOf(e.map.classOf(b)) !== p) continue
          e.router.present.delete(b)
          this.ssd.delete(e.router.image, b)
          n--
        }
      }
    }
  }

  /** The SSD store failed: stop redirecting; what it could not take goes to the HDD files. */
  private async ssdFailed(err: Error): Promise<void> {
    log.error(`${err.message}: meta-data writes now go to the HDD files; the blocks it held back are written there`)
    let ok = true
    for (const e of this.byKey.values()) {
      try {
        await e.updating
        await this.destageAll(e)
        e.router.present.clear()
      } catch (x) {
        ok = false
        log.error(`image ${e.rel}: writing its SSD-held blocks to the HDD after the store failed: ${(x as Error).message}; the SSD store ${this.opts.ssdPath} is kept for recovery`)
      }
    }
    if (ok) {
      // Its dirty rows are on the HDD now and would be stale at the next mount: the store goes.
      this.ssd.abandon()
      log.error(`the SSD store ${this.opts.ssdPath} was removed (everything it held is on the HDD); the mount goes on as a pass-through with the RAM cache; the next mount starts a new store`)
    }
  }

  /** `vmdi-fuse destage`: every image, or those whose relative path is `rel`. */
  async destageCommand(rel?: string): Promise<{ path: string; blocks: number }[]> {
    const out: { path: string; blocks: number }[] = []
    const list = this.images().filter((e) => !rel || e.rel === rel.replace(/^\/+/, ''))
    if (rel && !list.length) throw new Error(`no image ${rel} is attached to this mount (vmdi-fuse stats lists them)`)
    for (const e of list) out.push({ path: e.rel, blocks: await this.destageAll(e) })
    return out
  }

  /**
   * The binding answers reads whose blocks the RAM tier indexes on the libfuse
   * thread (RamMirror); `drain` hands back the keys of the blocks it served, which
   * count as RAM hits of their image and class and as LRU use, as if JS had served them.
   */
  serveNatively(mirror: RamMirror, drain: (out: Float64Array) => number): void {
    if (this.opts.cacheMode === 'conventional' || this.ram.capacity === 0) return
    this.ram.attachMirror(mirror)
    this.drainNative = drain
    this.drainTimer = setInterval(() => this.drainServed(), NATIVE_DRAIN_MS)
    this.drainTimer.unref()
  }

  /** Whether reads of this image's handles may be answered by the binding (see serveNatively). */
  get servesNatively(): boolean {
    return this.drainNative !== null
  }

  private drainServed(): void {
    if (!this.drainNative) return
    const now = Date.now()
    let byId: Map<number, ImageEntry> | null = null
    for (;;) {
      const n = this.drainNative(this.drained)
      if (n === 0) return
      byId ??= new Map(this.images().map((e) => [e.router.image, e]))
      for (let i = 0; i < n; i++) {
        const key = this.drained[i]
        const image = Math.floor(key / 0x1_0000_0000)
        byId.get(image)?.router.servedFromRam(key - image * 0x1_0000_0000, now)
        this.ram.touch(key)
      }
      if (n < this.drained.length) return
    }
  }

  stats(): DatapathStats {
    this.drainServed()
    return {
      mode: this.opts.cacheMode ?? 'introspect',
      ram: { ...this.ram.stats, bytes: this.ram.capacity * BLOCK },
      ssd: { path: this.opts.ssdPath, heldBlocks: this.heldBlocks(), capBlocks: this.capBlocks, dirtyBlocks: this.dirtyTotal(), failed: this.ssd.failed?.message ?? null },
      images: this.images().map((e) => ({
        path: e.rel,
        scan: { ...e.scan },
        fileBytes: e.router.fileSize,
        dirtyBlocks: e.router.dirty.size,
        ssdBlocks: e.router.present.size,
        ...e.router.counters,
        classes: Object.fromEntries([...e.router.stats].sort((a, b) => a[0] - b[0]).map(([c, s]) => [className(c), { ...s }])),
        mapClasses: Object.fromEntries([...e.map.countByClass()].sort((a, b) => a[0] - b[0]).map(([c, n]) => [className(c), n])),
      })),
      refused: [...this.refused.keys()].map((p) => path.relative(this.opts.storeRoot, p)),
    }
  }

  /** Clean unmount: wait for scans and map updates, destage everything, save maps, close. */
  async close(): Promise<void> {
    this.closed = true
    if (this.timer) clearInterval(this.timer)
    if (this.drainTimer) clearInterval(this.drainTimer)
    this.drainServed()
    await this.scanQueue.catch(() => undefined)
    for (const e of this.byKey.values()) {
      await e.updating
      try {
        const n = await this.destageAll(e)
        if (n) log.info(`image ${e.rel}: ${n} block(s) destaged at unmount`)
        if (e.scan.state === 'done' && !this.ssd.failed) {
          this.ssd.saveMap(e.id, e.map.serialize(BLOCK))
          if (e.ins && e.router.dirty.size === 0) {
            const st = fs.fstatSync(e.fd, { bigint: true })
            this.ssd.saveCleanRecord(e.id, packClean(st.mtimeNs, Number(st.size), e.ins))
          }
        }
      } catch (x) {
        log.error(`image ${e.rel}: destage at unmount failed: ${(x as Error).message}; the SSD store keeps its blocks for the next mount`)
      }
      await e.ins?.close().catch(() => undefined)
      fs.closeSync(e.fd)
    }
    await this.ssd.close()
  }
}

export interface DatapathStats {
  mode: 'introspect' | 'conventional'
  ram: { hits: number; misses: number; evictions: number; blocks: number; capacity: number; bytes: number }
  ssd: { path: string; heldBlocks: number; capBlocks: number; dirtyBlocks: number; failed: string | null }
  images: ({
    path: string
    scan: ImageEntry['scan']
    fileBytes: number
    dirtyBlocks: number
    ssdBlocks: number
    classes: Record<string, ClassStats>
    mapClasses: Record<string, number>
  } & RouterCounters)[]
  refused: string[]
}

function sameStat(rec: { mtimeNs: bigint; size: number }, abs: string): boolean {
  try {
    const st = fs.statSync(abs, { bigint: true })
    return st.mtimeNs === rec.mtimeNs && Number(st.size) === rec.size
  } catch {
    return false
  }
}

/** The clean-unmount record: JSON {mtimeNs, size, volumes}, then each volume's ExtFs state (u32 length + bytes). */
function packClean(mtimeNs: bigint, size: number, ins: Inspection): Buffer {
  const states = ins.filesystems.map((f) => ({ volume: f.volume.index, state: f.fs.exportState() }))
  const head = Buffer.from(JSON.stringify({ mtimeNs: String(mtimeNs), size, volumes: states.map((x) => x.volume) }))
  const parts: Buffer[] = [u32(head.length), head]
  for (const x of states) parts.push(u32(x.state.length), x.state)
  return Buffer.concat(parts)
}

function unpackClean(b: Buffer): { mtimeNs: bigint; size: number; states: Map<number, Buffer> } | null {
  try {
    const n = b.readUInt32LE(0)
    const head = JSON.parse(b.subarray(4, 4 + n).toString()) as { mtimeNs: string; size: number; volumes: number[] }
    const states = new Map<number, Buffer>()
    let at = 4 + n
    for (const v of head.volumes) {
      const len = b.readUInt32LE(at)
      states.set(v, b.subarray(at + 4, at + 4 + len))
      at += 4 + len
    }
    return { mtimeNs: BigInt(head.mtimeNs), size: head.size, states }
  } catch {
    return null
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(n)
  return b
}

function signatureOf(block0: Buffer): Buffer {
  return crypto.createHash('sha256').update(block0).digest()
}

function optedOut(abs: string): boolean {
  try {
    const v = sys().lgetxattr(abs, OPT_OUT_XATTR)
    return typeof v !== 'number' && /^(off|no|0|false)$/i.test(v.toString('utf8').trim())
  } catch {
    return false
  }
}

async function volumeRead(ins: Inspection, volume: Inspection['layout']['volumes'][number], offset: number, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length)
  for (const s of volume.segments) {
    const lo = Math.max(offset, s.volumeOffset)
    const hi = Math.min(offset + length, s.volumeOffset + s.length)
    if (hi > lo) (await ins.disk.read(s.diskOffset + (lo - s.volumeOffset), hi - lo)).copy(out, lo - offset)
  }
  return out
}

/** The class of 4 KiB block b of the image file: the highest-priority meta-data class of any byte in it, else small-file data if any byte is, else data. */
export function fileBlockClass(ins: Inspection, b: number): BlockClass {
  let best = BlockClass.Data
  const better = (c: BlockClass) => {
    if (placementRank(c) > placementRank(best)) best = c
  }
  const end = (b + 1) * BLOCK
  for (let at = b * BLOCK; at < end; ) {
    const loc = ins.disk.locate(0, at)
    const n = Math.max(1, Math.min(loc.length, end - at))
    if (loc.kind === 'container') better(BlockClass.Container)
    else if (loc.kind === 'guest' || loc.kind === 'compressed') {
      const g = loc.guestOffset
      for (const r of ins.layout.regions) if (r.offset < g + n && g < r.offset + r.length) better(BlockClass.PartitionTable)
    }
    at += n
  }
  for (const p of fsPieces(ins, b * BLOCK, BLOCK, true)) {
    const bs = p.efs.info.blockSize
    const f0 = Math.floor(p.vlo / bs)
    for (const [, , cls] of p.efs.map.runsIn(f0, Math.ceil(p.vhi / bs) - f0)) better(cls)
  }
  return best
}

/** A piece of image bytes that one scanned file system holds: where it starts in the image file, and its byte range in the volume. */
interface FsPiece {
  volume: Inspection['layout']['volumes'][number]
  efs: Inspection['filesystems'][number]['fs']
  /** Image file offset of the piece's first byte. */
  at: number
  vlo: number
  vhi: number
}

/** The pieces of image bytes [pos, pos+len) that scanned file systems hold (compressed grains too when `compressed`). */
function* fsPieces(ins: Inspection, pos: number, len: number, compressed: boolean): Generator<FsPiece> {
  for (let at = pos; at < pos + len; ) {
    const loc = ins.disk.locate(0, at)
    const n = Math.max(1, Math.min(loc.length, pos + len - at))
    if (loc.kind === 'guest' || (compressed && loc.kind === 'compressed')) {
      for (const { volume, fs: efs } of ins.filesystems) {
        for (const seg of volume.segments) {
          const lo = Math.max(loc.guestOffset, seg.diskOffset)
          const hi = Math.min(loc.guestOffset + n, seg.diskOffset + seg.length)
          if (hi <= lo) continue
          yield { volume, efs, at: at + (lo - loc.guestOffset), vlo: seg.volumeOffset + (lo - seg.diskOffset), vhi: seg.volumeOffset + (hi - seg.diskOffset) }
        }
      }
    }
    at += n
  }
}

/** A DiskFile over the image's router: parsers see the current bytes, redirected writes included. */
class RouterFile implements DiskFile {
  bytesRead = 0
  readonly name: string
  constructor(private readonly entry: ImageEntry, private readonly stopped: () => boolean) {
    this.name = entry.abs
  }
  get size(): number {
    return this.entry.router.fileSize
  }
  async read(offset: number, length: number): Promise<Buffer> {
    if (this.stopped()) throw new IntrospectIOError('the mount is shutting down', { file: this.name, offset })
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new IntrospectIOError(`read of ${length} bytes at ${offset} is outside 0..${this.size}`, { file: this.name, offset })
    }
    const buf = Buffer.alloc(length)
    const n = await this.entry.router.readForScan(buf, length, offset)
    if (n !== length) throw new IntrospectIOError(`short read: wanted ${length} bytes, got ${n}`, { file: this.name, offset })
    this.bytesRead += length
    return buf
  }
  async refresh(): Promise<number> {
    return this.size
  }
  async dataRanges(start: number, end: number): Promise<[number, number][]> {
    return [[start, end]]
  }
  async close(): Promise<void> {
    /* the fd is the datapath's */
  }
}
