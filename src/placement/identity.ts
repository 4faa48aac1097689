// Which image an opened file is to the SSD store (DESIGN.md, invariant 4:
// nothing is silently lost). The store keeps one row per image path (its
// identity when last registered: device, inode, size, a digest of its first
// 4 KiB); this is the policy that compares a file with its row and decides
// what the store's copies of it are worth now.

import type { ImageIdentity, SsdStore } from '../store/ssd'

export type ImageStatus =
  /** Never seen: a fresh id, no blocks, no map. */
  | 'new'
  /** The same image as last time: its blocks and map are valid. */
  | 'same'
  /** It changed behind the store's back and the store held no dirty block for it: old blocks and map dropped. */
  | 'reset'
  /** It changed behind the store's back while the store holds dirty blocks for it: refuse it until recovered. */
  | 'conflict'

export interface Registration {
  id: number
  status: ImageStatus
  /** The saved map (ExtentMap.serialize) when 'same', else null. */
  map: Buffer | null
  /** Dirty blocks the store holds of it ('same', 'conflict'; 0 otherwise). */
  dirtyBlocks: number
  /** The clean-unmount record when 'same', else null. */
  clean: Buffer | null
}

/**
 * Finds or registers an image by path. An image whose identity (device,
 * inode, header signature) changed is reset when the store holds no dirty
 * block of it, and reported as a conflict when it does: those blocks are the
 * only copy of acknowledged writes and must not be dropped or silently applied
 * over a file someone else rewrote. A conflict changes nothing in the store,
 * so the image stays in conflict (after a rename too) until `recover` resolves it.
 */
export function registerImage(ssd: SsdStore, who: ImageIdentity): Registration {
  const row = ssd.imageRecord(who.path)
  if (!row) return { id: ssd.createImage(who), status: 'new', map: null, dirtyBlocks: 0, clean: null }
  const dirty = ssd.dirtyBlocks(row.id).length
  // The size is not compared: writes past the end grow the file between a crash and the
  // next mount. The signature follows our own writes of its block (setSignature); the
  // previous one is accepted too, for a crash between recording it and the write.
  const same = row.dev === who.dev && row.ino === who.ino && (row.signature.equals(who.signature) || Boolean(row.prev?.equals(who.signature)))
  if (same) {
    ssd.updateIdentity(row.id, who, row.size !== who.size || !row.signature.equals(who.signature))
    return { id: row.id, status: 'same', map: row.map, dirtyBlocks: dirty, clean: row.clean }
  }
  if (dirty > 0) return { id: row.id, status: 'conflict', map: null, dirtyBlocks: dirty, clean: null }
  ssd.resetImage(row.id)
  ssd.updateIdentity(row.id, who)
  return { id: row.id, status: 'reset', map: null, dirtyBlocks: 0, clean: null }
}
