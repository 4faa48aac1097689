// The VM-start signal (issue 18, item 2): when a hypervisor starts a VM, the
// image's boot set (the meta-data a boot walks and its boot files' data:
// kernels, initial RAM disks, init) is brought into RAM ahead of every other
// image's background work; once the boot is over, the blocks only the boot
// needed (boot files' data) drop to the lowest RAM priority.
//
// Signals: a lock file appearing through the mount, as hypervisors make them
// before they open a disk (VMware on VMFS-style layouts: a `<disk>.lck`
// directory beside the disk; on NFS datastores: a `.lck-<fileid>` file, the
// locked file's inode number in hex), and the first open of an image (attach,
// or a reopen after its last close).
//
// While an image boots (`ImageEntry.boot`): the preload scheduler takes its
// meta-data and boot files' spans before anything else, ungated by its guest's
// activity (schedule.ts, `rush`); boot files' data goes to RAM at
// BOOT_RAM_PRIORITY (ImageState.ramPriority), and what the SSD store already
// holds of it is copied to RAM at once. The boot ends when the guest has been
// quiet for bootQuietMs() (20 s), or BOOT_MAX_MS after the signal; then its boot files'
// blocks in RAM go to priority 0 (they stay cached while nothing needs the room).
//
// The boot set is also learnt: from the signal until the boot ends, every
// block the guest reads is recorded (the native data path sends the image's
// reads to JavaScript meanwhile, so none is missed), and at the end the data
// blocks among them (up to MAX_LEARN_BLOCKS) are kept in the SSD store
// (SsdStore.saveBootSet). At the next start they are read from the HDD into
// RAM at BOOT_RAM_PRIORITY, in file order, ahead of the guest's need; at the end
// of that boot they drop to priority 0 like the boot files.

import path from 'path'
import { BlockClass, isFastTier, isMetadata } from '../introspect/classes'
import { log } from '../log'
import { preadFull } from '../store/device'
import { BLOCK, type RamCache } from '../store/ram'
import type { SsdStore } from '../store/ssd'
import { foldRuns } from './blocks'
import type { ImageEntry } from './image'
import { BOOT_RAM_PRIORITY, ramWorthy } from './image-state'
import { NATIVE_NONE } from './native-data'

/** Blocks of a learnt boot set at most (1 GiB); a boot that reads more keeps its first ones. */
export const MAX_LEARN_BLOCKS = 262_144
/** Largest prefetch read of the learnt set, in blocks (1 MiB). */
const PREFETCH_SPAN = 256

/** The boot is over once the guest has made no request for this long (VMDI_BOOT_QUIET_MS: tests). */
export function bootQuietMs(): number {
  return Number(process.env.VMDI_BOOT_QUIET_MS) || 20_000
}
/** ... or this long after the signal, whatever it does. */
export const BOOT_MAX_MS = 10 * 60_000
/** Copies from the SSD store to RAM between yields to guest requests. */
const COPY_CHUNK = 256

/** Whether a name created through the mount is a hypervisor's lock of a disk, and what it names. */
export function lockOf(name: string): { disk: string } | { fileid: number } | null {
  const nfs = /^\.lck-([0-9a-f]{1,16})$/i.exec(name)
  if (nfs) return { fileid: parseInt(nfs[1], 16) }
  if (name.length > 4 && name.toLowerCase().endsWith('.lck')) return { disk: name.slice(0, -4) }
  return null
}

/** The attached images a lock named `name` in directory `dir` (absolute) stands for. */
export function lockedImages(dir: string, name: string, images: Iterable<ImageEntry>): ImageEntry[] {
  const lock = lockOf(name)
  if (!lock) return []
  const out: ImageEntry[] = []
  for (const e of images) {
    if (e.unlinked || path.dirname(e.abs) !== dir) continue
    if ('disk' in lock ? path.basename(e.abs) === lock.disk : Number(e.key.split(':')[1]) === lock.fileid) out.push(e)
  }
  return out
}

/**
 * The VM of `entry` starts (`why`: the signal, for the log): its boot set goes
 * first, and what it reads through JavaScript is learnt. `learnAll` (a lock
 * file: the hypervisor says a VM boots): for BOOT_LEARN_MS every read goes to
 * JavaScript so that none is missed; after a mere open the native data path
 * keeps serving data reads (a VM that opens its disk and streams, or fio, must
 * not pay for learning), and only what reaches JavaScript is learnt.
 */
export function vmStarting(entry: ImageEntry, ram: RamCache, ssd: SsdStore, why: string, stop: () => boolean, learnAll = false): void {
  const now = Date.now()
  const again = entry.boot !== null
  entry.boot = { since: now, why }
  const s = entry.state
  s.booting = true
  if (learnAll && !forced.has(entry) && s.native?.active) {
    forced.set(entry, now)
    s.native.readsToJs(true)
  }
  if (again) return
  const read = new Set<number>()
  learning.set(entry, read)
  booting.add(entry)
  s.onGuestRead = (first, last) => {
    for (let b = first; b <= last && read.size < MAX_LEARN_BLOCKS; b++) read.add(b)
  }
  const learnt = ssd.bootSet(entry.id)
  log.info(`image ${entry.rel}: VM start (${why}): its meta-data and boot files go to RAM first${learnt ? `, then the ${learnt.reduce((a, r) => a + r[1], 0)} block(s) its last boot read` : ''}`)
  void copyBootSet(entry, ram, stop).then(() => (learnt ? prefetchLearnt(entry, ram, learnt, stop) : undefined))
}

/** Images booting now (a boot storm's prefetches share RAM). */
const booting = new Set<ImageEntry>()

/** What each booting image's guest has read since its start (the boot set being learnt). */
const learning = new WeakMap<ImageEntry, Set<number>>()
/** Images whose every read goes to JavaScript while they boot (a lock-file start), since when. */
const forced = new Map<ImageEntry, number>()
/** A forced learning window lasts at most this long, even if the boot goes on. */
export const BOOT_LEARN_MS = 120_000

/**
 * The learnt boot set's data blocks into RAM at BOOT_RAM_PRIORITY, in file
 * order, a span between guest requests: from the SSD store where it kept
 * them at the last boot's end (keepLearnt), the rest from the HDD.
 */
async function prefetchLearnt(entry: ImageEntry, ram: RamCache, runs: Array<[number, number]>, stop: () => boolean): Promise<void> {
  const s = entry.state
  const fileBlocks = Math.ceil(s.size / BLOCK)
  // Meta-data and boot files come by their own path; a copy in RAM or a write meanwhile wins.
  const wanted = (b: number) => !s.routedAsMeta(b) && !ram.has(s.key(b))
  let taken = 0
  const toRam = (b: number, blk: Buffer) => {
    taken++
    ram.set(s.key(b), blk, BOOT_RAM_PRIORITY, true)
    // The binding then answers it from RAM (its RAM index), not from the HDD file.
    s.native?.lower(b, 1, NATIVE_NONE)
    s.counters.bootPrefetched++
  }
  // In a boot storm each image prefetches at most its share of half the RAM: past it, prefetched
  // blocks would evict other booting images' before their guests read them (the rest of a set
  // kept on the SSD store is read from there when the guest asks).
  for (const [start, count] of runs) {
    for (let at = start; at < Math.min(start + count, fileBlocks); at += PREFETCH_SPAN) {
      if (stop() || !entry.boot || taken >= ram.capacity / 2 / Math.max(1, booting.size)) return
      const end = Math.min(at + PREFETCH_SPAN, start + count, fileBlocks)
      // The SSD store's copies first (no await between the read and the insert: a write cannot slip in).
      let lo = end
      let hi = at
      for (let b = at; b < end; b++) {
        if (!wanted(b)) continue
        const held = s.held.isHeld(b) && !s.ssd.failed ? s.held.read(b) : undefined
        if (held) toRam(b, held.data)
        else {
          lo = Math.min(lo, b)
          hi = b + 1
        }
      }
      if (lo < hi) {
        const w = s.watch.range(lo, hi)
        try {
          const buf = Buffer.allocUnsafe((hi - lo) * BLOCK)
          await preadFull(s.dev, buf, 0, buf.length, lo * BLOCK)
          for (let b = lo; b < hi; b++) if (wanted(b) && !s.held.isHeld(b) && !w.written(b)) toRam(b, buf.subarray((b - lo) * BLOCK, (b - lo + 1) * BLOCK))
        } catch (e) {
          log.warn(`image ${entry.rel}: prefetch of the learnt boot set stopped: ${(e as Error).message}`)
          return
        } finally {
          w.release()
        }
      }
      await new Promise((r) => setImmediate(r))
    }
  }
}

/**
 * At a boot's end: the learnt set's data blocks get clean copies in the SSD
 * store (from RAM where a copy is there, else read from the HDD in file-order
 * spans in the background), so the next start reads them from the SSD, not
 * the HDD. They are data: JavaScript serves reads of them from the copy (the
 * router; the native table keeps them NONE, lowered before the HDD read so no
 * native write slips in between), a write drops the copy
 * (ImageState.dropCopies), and the cap's eviction takes them first (the
 * lowest class priority).
 */
async function keepLearnt(entry: ImageEntry, ram: RamCache, blocks: number[]): Promise<void> {
  const s = entry.state
  const blk = Buffer.allocUnsafe(BLOCK)
  // canRedirect() is false once the mount closes.
  const gone = () => entry.unlinked || s.ssd.failed !== null || !s.canRedirect()
  const wanted = (b: number) => !s.held.isHeld(b) && !s.routedAsMeta(b)
  for (const [start, count] of foldRuns(blocks)) {
    for (let at = start; at < start + count; at += PREFETCH_SPAN) {
      if (gone()) return
      const end = Math.min(at + PREFETCH_SPAN, start + count, Math.ceil(s.size / BLOCK))
      let lo = end
      let hi = at
      for (let b = at; b < end; b++) {
        if (!wanted(b)) continue
        if (ram.peek(s.key(b), blk)) {
          s.held.putClean(b, blk, s.classOf(b))
          s.counters.bootKept++
        } else {
          lo = Math.min(lo, b)
          hi = b + 1
        }
      }
      if (lo < hi) {
        s.native?.lower(lo, hi - lo, NATIVE_NONE)
        const w = s.watch.range(lo, hi)
        try {
          const buf = Buffer.allocUnsafe((hi - lo) * BLOCK)
          await preadFull(s.dev, buf, 0, buf.length, lo * BLOCK)
          if (gone()) return
          for (let b = lo; b < hi; b++) {
            if (!wanted(b) || w.written(b) || ram.has(s.key(b))) continue
            s.held.putClean(b, buf.subarray((b - lo) * BLOCK, (b - lo + 1) * BLOCK), s.classOf(b))
            s.counters.bootKept++
          }
        } finally {
          w.release()
        }
      }
      await new Promise((r) => setImmediate(r))
    }
  }
}

/** What the SSD store holds of the boot set, into RAM (meta-data first), a few hundred blocks between guest requests. */
async function copyBootSet(entry: ImageEntry, ram: RamCache, stop: () => boolean): Promise<void> {
  const s = entry.state
  const take: [number, BlockClass][] = []
  for (const b of s.held.heldBlocks()) {
    const cls = s.classOf(b)
    if (isMetadata(cls) || cls === BlockClass.BootFile) take.push([b, cls])
  }
  take.sort((x, y) => s.ramPriority(y[1]) - s.ramPriority(x[1]) || x[0] - y[0])
  for (let i = 0; i < take.length; i++) {
    if (i % COPY_CHUNK === 0 && i > 0) {
      await new Promise((r) => setImmediate(r))
      if (stop() || !entry.boot || s.ssd.failed) return
    }
    const [b, cls] = take[i]
    const key = s.key(b)
    if (s.classOf(b) !== cls) continue
    if (ram.setPriority(key, s.ramPriority(cls))) continue
    const held = s.held.read(b)
    if (!held || !ramWorthy(cls, held.data)) continue
    ram.set(key, held.data, s.ramPriority(cls), true)
    s.counters.ramRefilled++
  }
}

/** Boot files' blocks of the image in RAM: all, and those at BOOT_RAM_PRIORITY (raised for a boot). */
export function bootRamBlocks(e: ImageEntry, ram: RamCache): { blocks: number; raised: number } {
  let blocks = 0
  let raised = 0
  for (const blk of ram.blocksOf(e.id)) {
    if (e.state.classOf(blk) !== BlockClass.BootFile) continue
    blocks++
    if (ram.priorityOf(e.state.key(blk)) === BOOT_RAM_PRIORITY) raised++
  }
  return { blocks, raised }
}

/**
 * Ends the boots that are over (quiet, or too long): what the guest read is
 * kept as the image's boot set (its data blocks), and the blocks in RAM only
 * the boot needed (boot files' data, the learnt set's prefetched blocks) drop
 * to the lowest priority.
 */
export function endBoots(images: Iterable<ImageEntry>, ram: RamCache, ssd: SsdStore, now = Date.now()): void {
  for (const [e, since] of forced) {
    if (e.boot && now - since < BOOT_LEARN_MS) continue
    forced.delete(e)
    e.state.native?.readsToJs(false)
  }
  // Booting images are those of the mount still booting: one detached or gone meanwhile no longer takes a share.
  booting.clear()
  for (const e of images) {
    const b = e.boot
    if (!b) continue
    booting.add(e)
    const s = e.state
    // Quiet: no guest request for bootQuietMs(), and none in progress (in a boot storm a request can wait at the disk for seconds).
    const quiet = s.guestInFlight === 0 && now - Math.max(s.lastGuestIo, b.since) >= bootQuietMs()
    if (!quiet && now - b.since < BOOT_MAX_MS) continue
    e.boot = null
    booting.delete(e)
    s.booting = false
    s.onGuestRead = null
    if (forced.delete(e)) s.native?.readsToJs(false)
    const read = learning.get(e)
    learning.delete(e)
    const data = read ? [...read].filter((blk) => !isFastTier(s.classOf(blk))).sort((x, y) => x - y) : []
    if (data.length && !ssd.failed) {
      ssd.saveBootSet(e.id, foldRuns(data))
      e.bootLearned = data.length
      void keepLearnt(e, ram, data).catch((x) => log.warn(`image ${e.rel}: keeping its boot set on the SSD store stopped: ${(x as Error).message}`))
    }
    let n = 0
    for (const blk of ram.blocksOf(e.id)) {
      const key = s.key(blk)
      if (ram.priorityOf(key) === BOOT_RAM_PRIORITY && !isMetadata(s.classOf(blk)) && ram.setPriority(key, 0)) n++
    }
    e.bootsEnded++
    log.info(
      `image ${e.rel}: boot over (${quiet ? `quiet for ${bootQuietMs() / 1000} s` : `${BOOT_MAX_MS / 60_000} min after the start`}): ` +
        `${data.length} data block(s) it read kept as its boot set; ${n} block(s) in RAM only the boot needed dropped to the lowest priority`,
    )
  }
}
