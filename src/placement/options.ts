// What a mount's datapath is told: the settings' part that places blocks
// (src/settings.ts checks them), and the constants of which files are images.

import { sys } from '../native/sys'
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
  /**
   * 'conventional': benchmark configuration (b), a plain LRU of every block with read-ahead; no scans, no SSD.
   * 'block-cache': configuration (f), (b) with an SSD block cache below it (block-cache.ts).
   */
  cacheMode?: CacheMode
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
  /** Meta-data RAM each image keeps against the others' blocks (--ram-floor): bytes, 'fair' (the RAM cache over the images attached; the default) or 0 (off). */
  ramFloor?: number | 'fair'
  /** RAM all images' maps and running scans may take together (--introspect-memory; default: no ceiling). */
  introspectMemoryBytes?: number
}

export type CacheMode = 'introspect' | 'conventional' | 'block-cache'
export const CACHE_MODES: readonly CacheMode[] = ['introspect', 'conventional', 'block-cache']

/** Whether a mode has no classes (no scan, no preload, no VM starts, no native data path): every block alike. */
export function classless(mode: CacheMode | undefined): boolean {
  return mode === 'conventional' || mode === 'block-cache'
}

/** Raw files smaller than this are never taken for disk images, nor containers of smaller disks. */
export const MIN_IMAGE_BYTES = 1 << 20
/** The extended attribute a VM's owner sets to keep an image out of introspection. */
export const OPT_OUT_XATTR = 'user.vmdi.introspect'

/** Whether the image's owner kept it out of introspection (OPT_OUT_XATTR set to off, no, 0 or false). */
export function optedOut(abs: string): boolean {
  try {
    const v = sys().lgetxattr(abs, OPT_OUT_XATTR)
    return typeof v !== 'number' && /^(off|no|0|false)$/i.test(v.toString('utf8').trim())
  } catch {
    return false
  }
}
