// One attached image: its entry in the datapath and the parts that serve it,
// assembled in one place (the datapath and the unit tests build them alike).
//
// | part      | module          | owns                                               |
// | --------- | --------------- | -------------------------------------------------- |
// | state     | image-state.ts  | size, stats, counters, locks and watches; the ledger view of its SSD rows |
// | router    | router.ts / conventional.ts / block-cache.ts | the request path (read-ahead window) |
// | destager  | destage.ts      | the one destage batch running                      |
// | keeper    | warm-start.ts   | the copies the scan read, until the preload adopts them |
// | map       | introspect      | the class of every 4 KiB block of the file         |

import fs from 'fs'
import type { BlockClass } from '../introspect/classes'
import type { ImageMap } from '../introspect/map/image-map'
import type { RamCache } from '../store/ram'
import type { SsdStore } from '../store/ssd'
import { BlockCachePolicy, BlockCacheRouter } from './block-cache'
import { ConventionalRouter } from './conventional'
import { Destager } from './destage'
import { ImageState, type ImageStateOptions, type Router } from './image-state'
import type { Ledger } from './ledger'
import type { CacheMode } from './options'
import { ImageRouter } from './router'
import { ScanKeeper } from './warm-start'

export interface ImageParts {
  state: ImageState
  router: Router
  destager: Destager
  keeper: ScanKeeper
}

export interface ImagePartsOptions extends ImageStateOptions {
  /** 'conventional': the conventional array (benchmark configuration (b)): no classes, no SSD store; 'block-cache': (f), with `policy`. */
  mode?: CacheMode
  /** The mount's SSD block cache (block-cache mode; default: one of its own, unbounded). */
  policy?: BlockCachePolicy
}

/** The parts that serve image `id` through the HDD file `fd`; `classOf` is read on every request (the map may be swapped under it). */
export function imageParts(fd: number, id: number, ram: RamCache, ssd: SsdStore, ledger: Ledger, classOf: (b: number) => BlockClass, opts: ImagePartsOptions = {}): ImageParts {
  const state = new ImageState(fd, id, ram, ssd, ledger.image(id), classOf, opts)
  const router =
    opts.mode === 'conventional' ? new ConventionalRouter(state) : opts.mode === 'block-cache' ? new BlockCacheRouter(state, opts.policy ?? new BlockCachePolicy(Infinity)) : new ImageRouter(state)
  return { state, router, destager: new Destager(state), keeper: new ScanKeeper(state, router) }
}

/**
 * A clean unmount's record of an image: its map once scanned, and the
 * clean-unmount record (the next mount trusts the store's clean copies while the
 * file's mtime and size match it) when nothing is dirty. `cachesAll`: the SSD
 * block cache, whose rows are kept over a clean unmount with no scan.
 */
export function saveAtUnmount(ssd: SsdStore, e: ImageEntry, cachesAll: boolean): void {
  if (e.scan.state === 'done') ssd.saveMap(e.id, e.map.serialize())
  if (((e.scan.state === 'done' && e.map.scanned) || cachesAll) && e.state.held.dirtyCount === 0) {
    const st = fs.fstatSync(e.fd, { bigint: true })
    ssd.saveCleanRecord(e.id, e.map.cleanRecord(st.mtimeNs, Number(st.size)))
  }
}

export type ScanState = 'off' | 'pending' | 'running' | 'done' | 'failed'

/** A background job's progress in 4 KiB blocks (`vmdi-fuse status`, metrics); times in ms since the epoch, 0: not yet. */
export interface Progress {
  done: number
  total: number
  startedMs: number
  endedMs: number
}

export function newProgress(): Progress {
  return { done: 0, total: 0, startedMs: 0, endedMs: 0 }
}

export class ImageRefused extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ImageRefused'
  }
}

/** An attached image, as the datapath keeps it. */
export interface ImageEntry extends ImageParts {
  /** Path relative to the store. */
  rel: string
  abs: string
  /** dev:ino of the file. */
  key: string
  fd: number
  /** The SSD store's id of the image. */
  id: number
  opens: number
  /** The class of every 4 KiB block of the file (empty until scanned, or the saved one meanwhile); swapped whole by a scan. */
  map: ImageMap
  scan: { state: ScanState; ms: number; tries: number; error: string | null; format: string | null; mapBytes: number; warm: boolean; restored: boolean }
  /** The scan's file-system walk (blocks of the volumes walked) and the preload's HDD sweeps (blocks of their spans). */
  progress: { scan: Progress; preload: Progress }
  /** Writes feeding the live map, one at a time. */
  updating: Promise<void>
  /** File blocks written while a scan runs (null: no scan running). */
  scanWrites: Set<number> | null
  unlinked: boolean
  /** Saved file-system states from the last clean unmount, used by the first scan (then dropped). */
  restore: Map<number, Buffer> | null
  /** The file's mtime and size when its last handle closed and its destage finished (a reopen checks them). */
  closedStat: { mtimeNs: bigint; size: number } | null
  /** Its VM is booting (vm-start.ts): since when, and the signal; null: not booting. */
  boot: { since: number; why: string } | null
  /** Boots that ended (their boot files' blocks dropped to the lowest RAM priority). */
  bootsEnded: number
  /** Blocks of the boot set learnt at the last boot's end (0: none yet). */
  bootLearned: number
}
