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
// Not done (said in docs/datapath.md): the boot set is not learnt (the blocks a
// VM read during its last boot are not recorded), so data a boot reads beyond
// the boot files found by name comes from the disk.

import path from 'path'
import { BlockClass, isMetadata } from '../introspect/classes'
import { log } from '../log'
import type { RamCache } from '../store/ram'
import type { ImageEntry } from './image'
import { BOOT_RAM_PRIORITY, ramWorthy } from './image-state'

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

/** The VM of `entry` starts (`why`: the signal, for the log): its boot set goes first. */
export function vmStarting(entry: ImageEntry, ram: RamCache, why: string, stop: () => boolean): void {
  const now = Date.now()
  const again = entry.boot !== null
  entry.boot = { since: now, why }
  entry.state.booting = true
  if (!again) log.info(`image ${entry.rel}: VM start (${why}): its meta-data and boot files go to RAM first`)
  void copyBootSet(entry, ram, stop)
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

/** Ends the boots that are over (quiet, or too long): boot files' blocks in RAM drop to the lowest priority. */
export function endBoots(images: Iterable<ImageEntry>, ram: RamCache, now = Date.now()): void {
  for (const e of images) {
    const b = e.boot
    if (!b) continue
    const quiet = now - Math.max(e.state.lastGuestIo, b.since) >= bootQuietMs()
    if (!quiet && now - b.since < BOOT_MAX_MS) continue
    e.boot = null
    e.state.booting = false
    let n = 0
    for (const blk of ram.blocksOf(e.id)) if (e.state.classOf(blk) === BlockClass.BootFile && ram.setPriority(e.state.key(blk), 0)) n++
    e.bootsEnded++
    log.info(`image ${e.rel}: boot over (${quiet ? `quiet for ${bootQuietMs() / 1000} s` : `${BOOT_MAX_MS / 60_000} min after the start`}): ${n} block(s) of boot files' data in RAM dropped to the lowest priority`)
  }
}
