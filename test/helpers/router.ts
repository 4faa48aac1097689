// One image's parts (router, destage, warm start) over a plain file and an SSD
// store, with a fresh ledger read from the store's rows: what a restart
// builds. For the router unit tests, which drive them as one object.
import type { BlockClass } from '../../src/introspect/classes'
import { imageParts, type ImagePartsOptions } from '../../src/placement/image'
import { Ledger } from '../../src/placement/ledger'
import { preloadSpan, refillRam, type Want } from '../../src/placement/warm-start'
import type { RamCache } from '../../src/store/ram'
import type { SsdStore } from '../../src/store/ssd'

export function openRouter(fd: number, id: number, ram: RamCache, ssd: SsdStore, classOf: (b: number) => BlockClass, opts: ImagePartsOptions = {}) {
  const p = imageParts(fd, id, ram, ssd, new Ledger(ssd), classOf, opts)
  const s = p.state
  return {
    parts: p,
    read: (buf: Buffer, len: number, pos: number) => p.router.read(buf, len, pos),
    write: (buf: Buffer, len: number, pos: number, absorb = false) => p.router.write(buf, len, pos, absorb),
    truncate: (size: number) => p.router.truncate(size),
    fsync: () => p.router.fsync(),
    reclassified: (start: number, count: number, from: BlockClass, to: BlockClass) => p.router.reclassified(start, count, from, to),
    destage: (limit?: number) => p.destager.destage(limit),
    keepScanReads: (maxBytes: number) => p.keeper.keep(maxBytes),
    readForScan: (buf: Buffer, len: number, pos: number) => p.keeper.read(buf, len, pos),
    adoptScanReads: (want?: Want, limit?: number) => p.keeper.adopt(want, limit),
    preload: (start: number, count: number, want?: Want) => preloadSpan(s, start, count, want),
    refillRam: (want?: Want, stop?: () => boolean) => refillRam(s, want, stop),
    get counters() {
      return s.counters
    },
    get stats() {
      return s.stats
    },
    get fileSize() {
      return s.size
    },
    /** Snapshots of the ledger's sets. */
    get dirty() {
      return new Set(s.held.dirtyBlocks())
    },
    get present() {
      return new Set(s.held.heldBlocks())
    },
  }
}
