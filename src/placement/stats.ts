// What `vmdi-fuse stats` shows of the datapath: the mount's tiers and, per
// image, its scan, its held blocks (the ledger's view), the request paths'
// counters and per-class stats, and the map's classes.

import { className } from '../introspect/classes'
import type { ImageEntry } from './image'
import type { ClassStats, RouterCounters } from './image-state'

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

/** One image's entry of the stats. */
export function imageStats(e: ImageEntry): DatapathStats['images'][number] {
  return {
    path: e.rel,
    scan: { ...e.scan },
    fileBytes: e.state.size,
    dirtyBlocks: e.state.held.dirtyCount,
    ssdBlocks: e.state.held.heldCount,
    ...e.state.counters,
    classes: Object.fromEntries([...e.state.stats].sort((a, b) => a[0] - b[0]).map(([c, s]) => [className(c), { ...s }])),
    mapClasses: Object.fromEntries([...e.map.countByClass()].sort((a, b) => a[0] - b[0]).map(([c, n]) => [className(c), n])),
  }
}
