// What `vmdi-fuse stats` shows of the datapath: the mount's tiers and, per
// image, its scan, its held blocks (the ledger's view), the request paths'
// counters and per-class stats, and the map's classes.

import { className } from '../introspect/classes'
import type { ImageEntry, Progress } from './image'
import type { ClassStats, RouterCounters } from './image-state'
import type { CacheMode } from './options'
import { bootRamBlocks } from './vm-start'

export interface DatapathStats {
  mode: CacheMode
  ram: { hits: number; misses: number; evictions: number; blocks: number; capacity: number; bytes: number }
  ssd: { path: string; heldBlocks: number; capBlocks: number; dirtyBlocks: number; failed: string | null }
  images: ({
    path: string
    scan: ImageEntry['scan']
    /** The scan's file-system walk and the preload's HDD sweeps. */
    progress: { scan: ProgressStats; preload: ProgressStats }
    fileBytes: number
    dirtyBlocks: number
    ssdBlocks: number
    classes: Record<string, ClassStats>
    mapClasses: Record<string, number>
    /** Its VM is booting (since the start signal, until quiet), and the boots that ended. */
    booting: boolean
    bootsEnded: number
    /** Its boot files' data blocks in RAM, and those raised to the boot priority (while booting). */
    bootRam: { blocks: number; raised: number }
    /** Blocks of its learnt boot set (what its VM read during its last boot; prefetched at the next start). */
    bootLearned: number
    /** Blocks of it in RAM, and of those the meta-data priorities (what its --ram-floor protects). */
    ramBlocks: number
    ramMetaBlocks: number
    /** The binding serves its data blocks natively (native-data.ts): its block-state table's bytes, or null (JavaScript only, or not built yet). */
    nativeTableBytes: number | null
  } & RouterCounters)[]
  refused: string[]
}

/** A background job's progress: 4 KiB blocks done of total, rate and time left (null until known). */
export interface ProgressStats {
  state: 'pending' | 'running' | 'done'
  doneBlocks: number
  totalBlocks: number
  /** MiB per second since it started (until it ended). */
  mibPerSec: number | null
  /** Seconds left at that rate; 0 once done. */
  etaSec: number | null
  /** When it started (ms since the epoch; null while pending): a benchmark's attach-to-scan latency. */
  startedMs: number | null
}

export function progressStats(p: Progress, now = Date.now()): ProgressStats {
  const state = p.startedMs === 0 ? 'pending' : p.endedMs === 0 ? 'running' : 'done'
  const secs = ((p.endedMs || now) - p.startedMs) / 1000
  const mibPerSec = state !== 'pending' && secs > 0 ? p.done / 256 / secs : null
  const left = Math.max(0, p.total - p.done)
  const etaSec = state === 'done' ? 0 : mibPerSec && p.total > 0 ? left / 256 / mibPerSec : null
  return { state, doneBlocks: p.done, totalBlocks: p.total, mibPerSec, etaSec, startedMs: p.startedMs || null }
}

/** One image's entry of the stats. */
export function imageStats(e: ImageEntry): DatapathStats['images'][number] {
  return {
    path: e.rel,
    scan: { ...e.scan },
    progress: { scan: progressStats(e.progress.scan), preload: progressStats(e.progress.preload) },
    fileBytes: e.state.size,
    dirtyBlocks: e.state.held.dirtyCount,
    ssdBlocks: e.state.held.heldCount,
    ...e.state.counters,
    classes: Object.fromEntries([...e.state.stats].sort((a, b) => a[0] - b[0]).map(([c, s]) => [className(c), { ...s }])),
    mapClasses: Object.fromEntries([...e.map.countByClass()].sort((a, b) => a[0] - b[0]).map(([c, n]) => [className(c), n])),
    booting: e.boot !== null,
    bootsEnded: e.bootsEnded,
    bootRam: bootRamBlocks(e, e.state.ram),
    bootLearned: e.bootLearned,
    ramBlocks: e.state.ram.countOf(e.id).blocks,
    ramMetaBlocks: e.state.ram.countOf(e.id).metaBlocks,
    nativeTableBytes: e.state.native?.active && e.state.native.built ? e.state.native.stats().tableBytes : null,
  }
}
