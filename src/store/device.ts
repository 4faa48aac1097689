// The storage tiers as devices of 4 KiB blocks (STYLE.md: balena file-disk,
// a tiny device contract with one test suite over every device; policy, which
// tier a block belongs on, lives above them in src/placement).
//
// Block b of an image covers bytes [b·4096, (b+1)·4096) of its file. Two kinds:
//   - 'file': the HDD image file itself, the authority: every block exists
//     (past the file's end it reads as zeros). The plain file and the file
//     behind the emulated disk (hdd-device.ts). Besides blocks it offers byte
//     I/O (HddDevice), which the router uses to move a run of blocks in one
//     pread/pwrite.
//   - 'copy': a tier of copies (the RAM cache, the SSD store), one image's
//     blocks of it: a block may be missing, and dropping one loses nothing the
//     file (or, for the SSD store's dirty copies, the placement above) does
//     not account for.
// What a write needs besides the bytes differs per tier (`Put`): the RAM cache
// a priority, the SSD store a class and whether the copy is dirty, the file how
// much of the block lies before its end.
//
// The hot paths stay the tiers' own: a RAM read through ramDevice is the
// synchronous RamCache.get (no promise, no allocation); the router may keep
// calling RamCache and SsdStore directly, the adapters add no state.

import fs from 'fs'
import { promisify } from 'util'
import { BLOCK, blockKey, type RamCache } from './ram'
import type { SsdStore } from './ssd'

export type MaybePromise<T> = T | Promise<T>

export interface BlockDevice<Put extends unknown[] = []> {
  readonly kind: 'file' | 'copy'
  /**
   * Copies block b into dst[at, at+4096). Returns how many bytes of it the
   * device holds: a file, those before its end (the rest of the block is
   * zeroed); a copy tier, 4096 or 0 (a miss: dst untouched).
   */
  read(b: number, dst: Buffer, at?: number): MaybePromise<number>
  /** Block b becomes src[0, 4096) (a file: src[0, len) with a shorter `len`). */
  write(b: number, src: Buffer, ...put: Put): MaybePromise<void>
  /**
   * Resolves once every write before it is as durable as the tier makes it:
   * the RAM cache at once (a copy in this process only: nothing survives it);
   * the SSD store committed with its WAL synced (survives a crash and a power
   * cut, visible to another connection); a file fdatasync'ed.
   */
  flush(): Promise<void>
}

/** A tier of copies: any block can be dropped. */
export interface CopyDevice<Put extends unknown[]> extends BlockDevice<Put> {
  readonly kind: 'copy'
  read(b: number, dst: Buffer, at?: number): MaybePromise<number>
  /** Forgets block b. */
  delete(b: number): void
  /** Forgets every block at or after `fromBlock` (a truncate; 0: the whole image). */
  drop(fromBlock: number): void
}

/** The HDD file as byte I/O: the plain file, or the file behind an emulated disk (--emulate-hdd). */
export interface HddDevice {
  /** Reads up to len bytes at file position pos into buf at off; resolves to the bytes read (0: end of file). */
  pread(buf: Buffer, off: number, len: number, pos: number): Promise<number>
  /** Writes up to len bytes of buf from off at file position pos; resolves to the bytes written. */
  pwrite(buf: Buffer, off: number, len: number, pos: number): Promise<number>
}

const read = promisify(fs.read)
const write = promisify(fs.write)

/** fdatasync(2) of a file descriptor. */
export const fdatasync: (fd: number) => Promise<void> = promisify(fs.fdatasync)

/** Reads exactly len bytes or up to EOF; the rest of buf[off..off+len) is zeroed. Resolves to the bytes read. */
export async function preadFull(dev: HddDevice, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  let done = 0
  while (done < len) {
    const n = await dev.pread(buf, off + done, len - done, pos + done)
    if (n === 0) break
    done += n
  }
  buf.fill(0, off + done, off + len)
  return done
}

/** Writes all len bytes (pwrite again after a short write). */
export async function pwriteFull(dev: HddDevice, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  let done = 0
  while (done < len) done += await dev.pwrite(buf, off + done, len - done, pos + done)
}

/**
 * An image file as a device: subclasses give the byte I/O (pread, pwrite);
 * blocks and flush are built on it. The fd stays the caller's: never closed here.
 */
export abstract class FileDevice implements BlockDevice<[len?: number]>, HddDevice {
  readonly kind = 'file'
  constructor(readonly fd: number) {}

  abstract pread(buf: Buffer, off: number, len: number, pos: number): Promise<number>
  abstract pwrite(buf: Buffer, off: number, len: number, pos: number): Promise<number>

  read(b: number, dst: Buffer, at = 0): Promise<number> {
    return preadFull(this, dst, at, BLOCK, b * BLOCK)
  }

  /** `len`: bytes of the block to write (the file's last, partial block: only those before its end, so the file does not grow). */
  write(b: number, src: Buffer, len = BLOCK): Promise<void> {
    return pwriteFull(this, src, 0, len, b * BLOCK)
  }

  flush(): Promise<void> {
    return fdatasync(this.fd)
  }
}

class PlainFile extends FileDevice {
  async pread(buf: Buffer, off: number, len: number, pos: number): Promise<number> {
    return (await read(this.fd, buf, off, len, pos)).bytesRead
  }

  async pwrite(buf: Buffer, off: number, len: number, pos: number): Promise<number> {
    return (await write(this.fd, buf, off, len, pos)).bytesWritten
  }
}

/** The HDD image file as it is (no emulated disk). */
export function plainDevice(fd: number): FileDevice {
  return new PlainFile(fd)
}

const DONE = Promise.resolve()

/** One image's blocks in the RAM cache. A write: the block's priority, and whether the binding may serve it (RamCache.set). */
export class RamDevice implements CopyDevice<[priority: number, servable?: boolean]> {
  readonly kind = 'copy'
  constructor(
    readonly cache: RamCache,
    readonly image: number,
  ) {}

  /** Synchronous: RamCache.get. */
  read(b: number, dst: Buffer, at = 0): number {
    return this.cache.get(blockKey(this.image, b), dst, at) ? BLOCK : 0
  }

  /** A full cache may decline it (every block it holds ranks higher): RamCache.set. */
  write(b: number, src: Buffer, priority: number, servable = false): void {
    this.cache.set(blockKey(this.image, b), src, priority, servable)
  }

  /** Nothing to do: RAM holds copies for this process only. */
  flush(): Promise<void> {
    return DONE
  }

  delete(b: number): void {
    this.cache.delete(blockKey(this.image, b))
  }

  drop(fromBlock: number): void {
    this.cache.dropImage(this.image, fromBlock)
  }
}

/** One image's blocks in the SSD store. A write: the block's class, and whether the copy is dirty (the only one). */
export class SsdDevice implements CopyDevice<[cls: number, dirty: boolean]> {
  readonly kind = 'copy'
  constructor(
    readonly store: SsdStore,
    readonly image: number,
  ) {}

  /** Synchronous (the store reads on the calling thread; pending writes are seen). */
  read(b: number, dst: Buffer, at = 0): number {
    const blk = this.store.get(this.image, b)
    if (!blk) return 0
    blk.data.copy(dst, at, 0, BLOCK)
    return BLOCK
  }

  write(b: number, src: Buffer, cls: number, dirty: boolean): void {
    this.store.put(this.image, b, src, cls, dirty)
  }

  /** The whole store's commit: every image's writes before it. */
  flush(): Promise<void> {
    return this.store.commit()
  }

  delete(b: number): void {
    this.store.delete(this.image, b)
  }

  drop(fromBlock: number): void {
    this.store.truncate(this.image, fromBlock)
  }
}

export function ramDevice(cache: RamCache, image: number): RamDevice {
  return new RamDevice(cache, image)
}

export function ssdDevice(store: SsdStore, image: number): SsdDevice {
  return new SsdDevice(store, image)
}
