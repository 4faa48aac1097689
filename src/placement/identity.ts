// Which image an opened file is to the SSD store (DESIGN.md, invariant 4:
// nothing is silently lost). The store keeps one row per image path (its
// identity when last registered: device, inode, size, a digest of its first
// 4 KiB); this is the policy that compares a file with its row and decides
// what the store's copies of it are worth now.

import crypto from 'crypto'
import fs from 'fs'
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
  /** When the daemon last wrote the file, as recorded ('same'; null: not recorded). */
  written: number | null
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
  if (!row) return { id: ssd.createImage(who), status: 'new', map: null, dirtyBlocks: 0, clean: null, written: null }
  const dirty = ssd.dirtyBlocks(row.id).length
  // The size is not compared: writes past the end grow the file between a crash and the
  // next mount. The signature follows our own writes of its block (setSignature); the
  // previous one is accepted too, for a crash between recording it and the write.
  const same = row.dev === who.dev && row.ino === who.ino && (row.signature.equals(who.signature) || Boolean(row.prev?.equals(who.signature)))
  if (same) {
    ssd.updateIdentity(row.id, who, row.size !== who.size || !row.signature.equals(who.signature))
    return { id: row.id, status: 'same', map: row.map, dirtyBlocks: dirty, clean: row.clean, written: row.written }
  }
  if (dirty > 0) return { id: row.id, status: 'conflict', map: null, dirtyBlocks: dirty, clean: null, written: null }
  ssd.resetImage(row.id)
  ssd.updateIdentity(row.id, who)
  return { id: row.id, status: 'reset', map: null, dirtyBlocks: 0, clean: null, written: null }
}

/** Slack for this daemon's last writes before a crash that the SSD store had not recorded yet (recorded every 250 ms and at each fsync). */
const WRITTEN_SLACK_MS = 3000

/** Why the file was changed by someone else after `written` (this daemon's last recorded write), or null: its ctime is not later. */
export function changedAfter(abs: string, written: number | null): string | null {
  if (written === null) return null // recorded by no mount yet (a store from before this check): nothing to compare
  const ctimeMs = Number(fs.statSync(abs, { bigint: true }).ctimeNs / 1_000_000n)
  if (ctimeMs <= written + WRITTEN_SLACK_MS) return null
  return `its ctime ${new Date(ctimeMs).toISOString()} is later than this daemon's last write to it at ${new Date(written).toISOString()}`
}

/** Whether the file's mtime and size are still those recorded. */
export function sameStat(rec: { mtimeNs: bigint; size: number }, abs: string): boolean {
  try {
    const st = fs.statSync(abs, { bigint: true })
    return st.mtimeNs === rec.mtimeNs && Number(st.size) === rec.size
  } catch {
    return false
  }
}

/** The identity signature of an image: a digest of its first 4 KiB (which follows our own writes of that block). */
export function signatureOf(block0: Buffer): Buffer {
  return crypto.createHash('sha256').update(block0).digest()
}
