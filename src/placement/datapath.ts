// The datapath of a mount (issue 5): which files are images, their parts
// (image.ts), background introspection (scan.ts), warm start (warm-start.ts),
// destage (destage.ts) and stats. One RAM cache, one SSD store and one ledger
// of what it holds serve every image of the mount.
//
// Life of an image: the first open of a file that probes as a disk image (or
// that the SSD store already knows) attaches it: an own read-write fd, a
// registration in the SSD store by identity, and a router that handles every
// block as data (except blocks with dirty copies) until the map is ready. The
// scan runs in the background through the router itself (it sees redirected
// writes). Writes that touch meta-data blocks first feed the live map and are
// then routed under the new classes. The image stays attached after its last
// close (the map stays warm); that last close starts a full destage so the
// HDD file is whole while no VM has it open.

import fs from 'fs'
import path from 'path'
import { probeImage, probeSmallContainer } from '../introspect/container'
import { ImageMap } from '../introspect/map/image-map'
import { log } from '../log'
import { excludeMatcher } from '../exclude'
import { BLOCK, RamCache, type RamMirror } from '../store/ram'
import { SsdStore } from '../store/ssd'
import { hddDevice } from '../store/hdd-device'
import type { HddModel } from '../store/hdd-model'
import { backgroundTick, failover } from './destage'
import { changedAfter, registerImage, sameStat, signatureOf } from './identity'
import { imageParts, ImageRefused, newProgress, saveAtUnmount, type ImageEntry } from './image'
import { Ledger } from './ledger'
import { MAX_SCANS, PreloadScheduler, Slots } from './schedule'
import { imageStats, type DatapathStats } from './stats'
import { beforeWrite, scanImage } from './scan'
import { classless, MIN_IMAGE_BYTES, OPT_OUT_XATTR, optedOut, type DatapathOptions } from './options'
import { BlockCachePolicy } from './block-cache'
import { warmStart } from './warm-start'
import { foldNative, NativeData, type NativeDataBinding } from './native-data'
import { RamDrain } from './ram-drain'
import { endBoots, lockedImages, vmStarting } from './vm-start'

export { ImageRefused, type ImageEntry, type ScanState } from './image'
export type { DatapathStats } from './stats'
export { MIN_IMAGE_BYTES, OPT_OUT_XATTR, type DatapathOptions } from './options'

/** How often each image's last HDD write is recorded in the SSD store (identity.ts: changedAfter's slack covers it). */
const NOTE_WRITES_MS = 250

export class Datapath {
  readonly ram: RamCache
  readonly ssd: SsdStore
  private readonly byKey = new Map<string, ImageEntry>()
  /** The same entries by SSD store id (the RAM tier's keys name images by id). */
  private readonly byId = new Map<number, ImageEntry>()
  private readonly excluded: (rel: string) => boolean
  /** What the SSD store holds, per image, with the mount's totals. */
  private readonly ledger: Ledger
  private readonly capBlocks: number
  /** Block-cache mode: the SSD block cache's LRU over every image's blocks (block-cache.ts). */
  private readonly blockCache: BlockCachePolicy | null
  /** New data is held on the SSD store while its dirty blocks are fewer than this (at most half the cap). */
  private readonly newDataBlocks: number
  /** Background introspection (scan, then warm start) of every attached image, while it runs. */
  private readonly background = new Set<Promise<void>>()
  /** Scans run at once, at most MAX_SCANS (they are short); more wait for a slot. */
  private readonly scanSlots = new Slots(MAX_SCANS)
  /** Preloads of every image, one span at a time, meta-data first. */
  private readonly preloads: PreloadScheduler
  private timer: NodeJS.Timeout | null = null
  private readonly noteTimer: NodeJS.Timeout
  private closed = false
  /** The SSD store's failover (what it held written to the HDD files), once it has failed. */
  private failover: Promise<void> | null = null
  private destaging = false
  /** RAM hits the binding answered (serveNatively), counted as if JavaScript had served them. */
  private ramDrain: RamDrain | null = null
  /** The native data path (serveDataNatively), or null: every data block through JavaScript. */
  private nativeData: NativeData | null = null
  /** Images refused at attach (identity conflict), by real path: the message. */
  readonly refused = new Map<string, string>()

  constructor(private readonly opts: DatapathOptions) {
    this.ram = new RamCache(opts.ramBytes)
    // Shares: each image keeps its floor of meta-data RAM against the others' blocks.
    const floor = opts.ramFloor ?? 'fair'
    if (floor !== 0) this.ram.floorOf = floor === 'fair' ? () => Math.floor(this.ram.capacity / Math.max(1, this.byKey.size)) : () => Math.floor(floor / BLOCK)
    this.ssd = SsdStore.open(opts.ssdPath)
    this.capBlocks = Math.floor(opts.ssdMaxBytes / BLOCK)
    this.blockCache = opts.cacheMode === 'block-cache' ? new BlockCachePolicy(this.capBlocks) : null
    this.newDataBlocks = Math.min(Math.floor(this.capBlocks / 2), Math.floor((opts.newDataBytes ?? 0) / BLOCK))
    this.excluded = excludeMatcher(opts.exclude)
    this.ledger = new Ledger(this.ssd)
    this.preloads = new PreloadScheduler(opts.destageIdleMs ?? 200)
    // Called for every batch that fails: the failover runs once.
    this.ssd.onFailure = (e) => {
      this.failover ??= this.ssdFailed(e)
    }
    this.timer = setInterval(() => void this.tick(), opts.destageIntervalMs ?? 250)
    this.timer.unref()
    // When each image's HDD file was last written, into the SSD store (a crash's next mount compares its ctime).
    this.noteTimer = setInterval(() => {
      for (const e of this.byKey.values()) {
        foldNative(e.state)
        e.state.noteWrites()
      }
      endBoots(this.byKey.values(), this.ram, this.ssd)
    }, NOTE_WRITES_MS)
    this.noteTimer.unref()
  }

  /** Bytes of the introspection memory ceiling (--introspect-memory) left for `entry`'s scan: what the other images' maps do not take. */
  private introspectMemoryLeft(entry: ImageEntry): number {
    const limit = this.opts.introspectMemoryBytes ?? Infinity
    let used = 0
    for (const e of this.images()) if (e !== entry) used += e.map.memoryBytes()
    return limit - used
  }

  images(): ImageEntry[] {
    return [...this.byKey.values()]
  }

  /** Meta-data writes may be redirected: the store works and its dirty blocks are under the cap. */
  private canRedirect(): boolean {
    return !this.ssd.failed && !this.closed && this.ledger.dirtyTotal < this.capBlocks
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
        if (known.opens++ === 0 && known.scan.state !== 'off') vmStarting(known, this.ram, this.ssd, 'reopened', () => this.closed)
        known.closedStat = null
        return known
      }
    }
    if (this.refused.has(abs)) throw new ImageRefused(this.refused.get(abs)!)
    if (this.excluded(rel)) return null
    const storedId = this.ssd.imageId(abs)
    if (storedId === null) {
      if (optedOut(abs)) return null
      let format: string | null
      try {
        // Attached by content: a file too small for a raw image may still be a fresh sparse
        // container of a large disk (a new VM's qcow2), which qemu will fill through this mount.
        format = st.size < MIN_IMAGE_BYTES ? await probeSmallContainer(abs, MIN_IMAGE_BYTES, this.opts.storeRoot) : await probeImage(abs)
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
    const reg = registerImage(this.ssd, { path: abs, dev: st.dev, ino: st.ino, size: st.size, signature: signatureOf(head) })
    // After a crash (no clean-unmount record) the store's unwritten blocks are the latest writes
    // only if nobody changed the file since this daemon's last write to it (e2fsck -y, a restore).
    const behind = reg.status === 'same' && !reg.clean && reg.dirtyBlocks > 0 ? changedAfter(abs, reg.written) : null
    if (reg.status === 'conflict' || behind) {
      fs.closeSync(fd)
      const msg =
        `image ${rel} changed on the HDD behind the SSD store's back${behind ? ` (${behind})` : ''} while the store holds ${reg.dirtyBlocks} unwritten block(s) of it; ` +
        `refused until resolved: unmount, then run "vmdi-fuse recover --apply ${abs}" (write the store's blocks over it) or "vmdi-fuse recover --discard ${abs}" (drop them), with --ssd ${this.opts.ssdPath}`
      this.refused.set(abs, msg)
      log.error(msg)
      throw new ImageRefused(msg)
    }
    // The clean-unmount record: mtime and size after our last write, and the file systems' states.
    let restore: Map<number, Buffer> | null = null
    if (reg.clean) {
      this.ssd.saveCleanRecord(reg.id, null) // a crash from here on leaves no record
      const rec = ImageMap.parseCleanRecord(reg.clean)
      const now = fs.statSync(abs, { bigint: true })
      if (!rec || rec.mtimeNs !== now.mtimeNs || rec.size !== Number(now.size)) {
        if (reg.dirtyBlocks === 0) {
          this.ledger.resetImage(reg.id)
          reg.map = null
          log.info(`image ${rel}: changed on the HDD since the last clean unmount (mtime or size): store copies dropped`)
        }
      } else restore = rec.states
    }
    let map = ImageMap.empty()
    if (reg.map) {
      try {
        map = ImageMap.fromSaved(reg.map)
      } catch (e) {
        log.warn(`image ${rel}: saved map unreadable (${(e as Error).message}): scanning afresh`)
      }
    }
    const mode = this.opts.cacheMode
    const parts = imageParts(fd, reg.id, this.ram, this.ssd, this.ledger, (b) => entry.map.classOf(b), {
      canRedirect: () => this.canRedirect() && mode !== 'conventional',
      device: hddDevice(fd, this.opts.hdd),
      mode,
      policy: this.blockCache ?? undefined,
      onBlockZero: async (bytes) => {
        this.ssd.setSignature(entry.id, signatureOf(bytes))
        // A store failing now is abandoned (its identity record with it): the guest's write goes on.
        await this.ssd.commitUnlessFailed()
      },
      ssdFailover: () => this.failover ?? Promise.resolve(),
    })
    // The file as it is now is the one this daemon serves: a later change not made through it is someone else's.
    parts.state.lastHddWrite = Date.now()
    const entry: ImageEntry = {
      ...parts,
      rel,
      abs,
      key,
      fd,
      id: reg.id,
      opens: 1,
      map,
      scan: { state: 'pending', ms: 0, tries: 0, error: null, format: null, mapBytes: 0, warm: false, restored: false },
      progress: { scan: newProgress(), preload: newProgress() },
      updating: Promise.resolve(),
      scanWrites: null,
      unlinked: false,
      restore,
      closedStat: null,
      boot: null,
      bootsEnded: 0,
      bootLearned: 0,
    }
    if (!reg.clean && reg.status === 'same') {
      // No clean-unmount record: the last mount ended in a crash (or the image was never
      // closed cleanly). Clean copies are not trusted; dirty ones are the latest writes (the
      // file's ctime was checked against this daemon's last recorded write above): kept.
      const dropped = entry.state.held.dropAllClean()
      if (dropped) log.info(`image ${rel}: no clean-unmount record (the last mount did not end cleanly): ${dropped} clean cached block(s) dropped, ${entry.state.held.dirtyCount} unwritten block(s) kept`)
    }
    this.byKey.set(key, entry)
    this.byId.set(entry.id, entry)
    if (!classless(mode)) this.nativeData?.attach(entry)
    if (!classless(mode)) vmStarting(entry, this.ram, this.ssd, 'first open', () => this.closed)
    log.info(
      `image ${rel}: attached (${reg.status === 'same' ? `known to the SSD store${reg.map ? ', saved map used at once' : ''}` : reg.status === 'reset' ? 'changed since last seen: store copies dropped' : 'new'}` +
        `${reg.dirtyBlocks ? `, ${reg.dirtyBlocks} dirty block(s) to destage` : ''})`,
    )
    if (classless(mode)) {
      entry.scan.state = 'off'
      entry.map = ImageMap.empty()
    } else {
      const job = this.introspect(entry).catch((e) => log.error(`image ${rel}: background introspection failed: ${(e as Error).stack ?? e}`))
      this.background.add(job)
      void job.finally(() => this.background.delete(job))
    }
    return entry
  }

  /** Scan, then warm start; scans run up to MAX_SCANS at once for the mount. */
  private async introspect(entry: ImageEntry): Promise<void> {
    const done = await this.scanSlots.run(() => scanImage(entry, { storeRoot: this.opts.storeRoot, smallFileBytes: this.opts.smallFileBytes ?? 0, bootFiles: this.opts.bootFiles ?? false, ssd: this.ssd, closed: () => this.closed, memoryLeft: () => this.introspectMemoryLeft(entry), scansRunning: () => this.scanSlots.running }))
    if (!done) return
    // warmStart adopts the scan's kept copies before its first await: the native table is built after.
    const warm = warmStart({
      rel: entry.rel,
      state: entry.state,
      keeper: entry.keeper,
      runs: () => entry.map.runs(),
      skip: (b) => entry.map.preloadSkip(b),
      stopped: () => this.closed || entry.unlinked || !this.canRedirect(),
      room: () => this.capBlocks - this.ledger.heldTotal,
      scheduler: this.preloads,
      progress: entry.progress.preload,
      rush: () => entry.boot !== null,
    })
    await this.nativeData?.start(entry, () => this.closed || entry.unlinked || !this.byKey.has(entry.key))
    await warm
    entry.progress.preload.endedMs ||= Date.now()
    entry.scan.warm = true
  }

  // --- the request path ------------------------------------------------------

  read(entry: ImageEntry, buf: Buffer, len: number, pos: number): Promise<number> {
    return entry.router.read(buf, len, pos)
  }

  async write(entry: ImageEntry, buf: Buffer, len: number, pos: number): Promise<number> {
    this.nativeData?.beforeWrite(entry, pos, len)
    const absorb = await beforeWrite(entry, buf, len, pos, this.ledger.dirtyTotal < this.newDataBlocks)
    const n = await entry.router.write(buf, len, pos, absorb)
    if (!absorb) this.nativeData?.afterWrite(entry, pos, len)
    return n
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
    void entry.destager
      .all(() => entry.opens > 0 || this.closed)
      .then(() => {
        if (entry.opens === 0 && entry.state.held.dirtyCount === 0) {
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
    if (id !== null) this.ledger.truncate(id, Math.ceil(size / BLOCK))
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
    if (id !== null) this.ledger.forgetImage(id)
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
    if (this.byId.get(e.id) === e) this.byId.delete(e.id)
    this.nativeData?.stop(e)
    e.keeper.drop()
    await e.updating
    this.ram.dropImage(e.id)
    if (unlinked) this.ledger.forgetImage(e.id)
    else this.ledger.resetImage(e.id)
    await e.map.close().catch(() => undefined)
    fs.close(e.fd, () => undefined)
    if (unlinked) log.info(`image ${e.rel}: unlinked: its blocks and map are forgotten`)
  }

  /** A name was created through the mount in directory `dir` (absolute): a hypervisor's lock of a disk starts its VM (vm-start.ts). */
  created(dir: string, name: string): void {
    for (const e of lockedImages(dir, name, this.byKey.values())) vmStarting(e, this.ram, this.ssd, `lock ${name}`, () => this.closed, true)
  }

  /** `vmdi-fuse destage`: every image, or those whose relative path is `rel`. */
  async destageCommand(rel?: string): Promise<{ path: string; blocks: number }[]> {
    const out: { path: string; blocks: number }[] = []
    const list = this.images().filter((e) => !rel || e.rel === rel.replace(/^\/+/, ''))
    if (rel && !list.length) throw new Error(`no image ${rel} is attached to this mount (vmdi-fuse stats lists them)`)
    for (const e of list) out.push({ path: e.rel, blocks: await e.destager.all() })
    return out
  }

  /** Background work: rate-limited destage while guests pause, the SSD cap. */
  private async tick(): Promise<void> {
    if (this.destaging || this.closed) return
    // The idle clock the destage reads includes the binding's own I/O.
    for (const e of this.byKey.values()) foldNative(e.state)
    this.destaging = true
    try {
      await backgroundTick(this.byKey.values(), this.ledger, { capBlocks: this.capBlocks, blocks: this.opts.destageBlocks, idleMs: this.opts.destageIdleMs })
    } catch (e) {
      log.error(`background destage failed: ${(e as Error).message}`)
    } finally {
      this.destaging = false
    }
  }

  /** The SSD store failed: stop redirecting; what it could not take goes to the HDD files. */
  private async ssdFailed(err: Error): Promise<void> {
    log.error(`${err.message}: meta-data writes now go to the HDD files; the blocks it held back are written there`)
    if (await failover(this.byKey.values(), this.opts.ssdPath)) {
      // Its dirty rows are on the HDD now and would be stale at the next mount: the store goes.
      this.ssd.abandon()
      log.error(`the SSD store ${this.opts.ssdPath} was removed (everything it held is on the HDD); the mount goes on as a pass-through with the RAM cache; the next mount starts a new store`)
    }
  }

  /**
   * The binding answers reads whose blocks the RAM tier indexes on the libfuse
   * thread (RamMirror); `drain` hands back the keys of the blocks it served, which
   * count as RAM hits of their image and class and as LRU use, as if JS had served them.
   */
  serveNatively(mirror: RamMirror, drain: (out: Float64Array) => number): void {
    if (this.ram.capacity === 0) return
    this.ram.attachMirror(mirror)
    this.ramDrain = new RamDrain(this.ram, drain, (id) => this.byId.get(id))
    this.ram.drainNative = () => this.ramDrain?.run()
  }

  /** The native data path (native-data.ts): `register`/`unregister` hand an image's table to its open handles and take it back. Not for the conventional array nor the block cache, nor under --emulate-hdd (the emulated disk must see every HDD I/O). */
  serveDataNatively(binding: NativeDataBinding, register: (entry: ImageEntry) => void, unregister: (entry: ImageEntry) => void): boolean {
    if (classless(this.opts.cacheMode) || this.opts.hdd) return false
    this.nativeData = new NativeData(binding, register, unregister, this.ram, (id) => this.byId.get(id), this.newDataBlocks > 0)
    return true
  }

  /** Whether reads of this image's handles may be answered by the binding (see serveNatively). */
  get servesNatively(): boolean {
    return this.ramDrain !== null
  }

  stats(): DatapathStats {
    this.ramDrain?.run()
    for (const e of this.byKey.values()) foldNative(e.state)
    return {
      mode: this.opts.cacheMode ?? 'introspect',
      ram: { ...this.ram.stats, bytes: this.ram.capacity * BLOCK },
      ssd: { path: this.opts.ssdPath, heldBlocks: this.ledger.heldTotal, capBlocks: this.capBlocks, dirtyBlocks: this.ledger.dirtyTotal, failed: this.ssd.failed?.message ?? null },
      images: this.images().map(imageStats),
      refused: [...this.refused.keys()].map((p) => path.relative(this.opts.storeRoot, p)),
    }
  }

  /** Clean unmount: wait for scans and map updates, destage everything, save maps, close. */
  async close(): Promise<void> {
    this.closed = true
    if (this.timer) clearInterval(this.timer)
    clearInterval(this.noteTimer)
    for (const e of this.byKey.values()) this.nativeData?.stop(e)
    this.ramDrain?.stop()
    await Promise.all([...this.background])
    for (const e of this.byKey.values()) {
      await e.updating
      try {
        const n = await e.destager.all()
        if (n) log.info(`image ${e.rel}: ${n} block(s) destaged at unmount`)
        if (!this.ssd.failed) saveAtUnmount(this.ssd, e, this.blockCache !== null)
      } catch (x) {
        log.error(`image ${e.rel}: destage at unmount failed: ${(x as Error).message}; the SSD store keeps its blocks for the next mount`)
      }
      await e.map.close().catch(() => undefined)
      fs.closeSync(e.fd)
    }
    await this.ssd.close()
  }
}
