// The per-image router (DESIGN.md, src/placement): splits each request into
// 4 KiB blocks of the image file, asks the class of each, and serves
// meta-data from RAM, then the SSD store, then the HDD file (keeping what it
// read on both), while data goes straight to the HDD file in coalesced
// pread/pwrite. Meta-data writes are redirected: RAM and the SSD store, marked
// dirty, never the HDD until destage.
//
// The one invariant everything here keeps (read-your-writes): a block has
// exactly one authoritative copy, the SSD store's when it holds a dirty copy
// (`dirty` mirrors which blocks do), the HDD file's otherwise. A block with a
// dirty copy is routed as meta-data whatever its class says now, so a stale
// HDD copy can never win; RAM only ever holds copies of the authority.

import fs from 'fs'
import { BlockClass, isMetadata, priorityOf } from '../introspect/classes'
import { BLOCK, blockKey, type RamCache } from '../store/ram'
import type { SsdStore } from '../store/ssd'

export interface ClassStats {
  reads: number
  ramHits: number
  ssdHits: number
  hddReads: number
  writes: number
  redirected: number
}

function pread(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((res, rej) => fs.read(fd, buf, off, len, pos, (e, n) => (e ? rej(e) : res(n))))
}

function pwrite(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((res, rej) => fs.write(fd, buf, off, len, pos, (e, n) => (e ? rej(e) : res(n))))
}

/** Reads exactly len bytes or up to EOF; the rest of buf[off..off+len) is zeroed. */
async function preadFull(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  let done = 0
  while (done < len) {
    const n = await pread(fd, buf, off + done, len - done, pos + done)
    if (n === 0) break
    done += n
  }
  buf.fill(0, off + done, off + len)
  return done
}

async function pwriteFull(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  let done = 0
  while (done < len) done += await pwrite(fd, buf, off + done, len - done, pos + done)
}

export class ImageRouter {
  /** Blocks whose authoritative copy is a dirty one in the SSD store. */
  readonly dirty: Set<number>
  readonly stats = new Map<BlockClass, ClassStats>()
  private size: number
  destaged = 0

  constructor(
    private readonly fd: number,
    readonly image: number,
    private readonly ram: RamCache,
    private readonly ssd: SsdStore,
    private classOf: (block: number) => BlockClass,
  ) {
    this.size = fs.fstatSync(fd).size
    this.dirty = new Set(ssd.dirtyBlocks(image))
  }

  /** Swaps the class source (a finished scan, a remount). Blocks with dirty copies keep them. */
  setClassifier(classOf: (block: number) => BlockClass): void {
    this.classOf = classOf
  }

  private stat(cls: BlockClass): ClassStats {
    let s = this.stats.get(cls)
    if (!s) this.stats.set(cls, (s = { reads: 0, ramHits: 0, ssdHits: 0, hddReads: 0, writes: 0, redirected: 0 }))
    return s
  }

  private routedAsMeta(b: number, cls: BlockClass): boolean {
    return isMetadata(cls) || this.dirty.has(b)
  }

  /** The current bytes of one meta-data-routed block: RAM, then SSD, then HDD (kept on both). */
  private async loadBlock(b: number, cls: BlockClass, into: Buffer): Promise<void> {
    const key = blockKey(this.image, b)
    const st = this.stat(cls)
    if (this.ram.get(key, into)) {
      st.ramHits++
      return
    }
    const s = this.ssd.get(this.image, b)
    if (s) {
      s.data.copy(into, 0, 0, BLOCK)
      this.ram.set(key, into, priorityOf(cls))
      st.ssdHits++
      return
    }
    await preadFull(this.fd, into, 0, BLOCK, b * BLOCK)
    st.hddReads++
    this.ram.set(key, into, priorityOf(cls))
    if (isMetadata(cls)) this.ssd.put(this.image, b, into, cls, false)
  }

  async read(buf: Buffer, len: number, pos: number): Promise<number> {
    const n = Math.max(0, Math.min(len, this.size - pos))
    if (n === 0) return 0
    let runStart = -1 // data run: first byte position
    let runLen = 0
    const flushRun = async () => {
      if (runLen) await preadFull(this.fd, buf, runStart - pos, runLen, runStart)
      runLen = 0
      runStart = -1
    }
    const tmp = Buffer.allocUnsafe(BLOCK)
    for (let at = pos; at < pos + n; ) {
      const b = Math.floor(at / BLOCK)
      const end = Math.min((b + 1) * BLOCK, pos + n)
      const cls = this.classOf(b)
      this.stat(cls).reads++
      if (!this.routedAsMeta(b, cls)) {
        if (runLen === 0) runStart = at
        runLen += end - at
        this.stat(cls).hddReads++
      } else {
        await flushRun()
        await this.loadBlock(b, cls, tmp)
        tmp.copy(buf, at - pos, at - b * BLOCK, end - b * BLOCK)
      }
      at = end
    }
    await flushRun()
    return n
  }

  async write(buf: Buffer, len: number, pos: number): Promise<number> {
    if (len === 0) return 0
    if (pos + len > this.size) {
      // Grow the HDD file first, so its size is the file's size whichever tier holds the bytes.
      fs.ftruncateSync(this.fd, pos + len)
      this.size = pos + len
    }
    let runStart = -1
    let runLen = 0
    const flushRun = async () => {
      if (runLen) await pwriteFull(this.fd, buf, runStart - pos, runLen, runStart)
      runLen = 0
      runStart = -1
    }
    const blk = Buffer.allocUnsafe(BLOCK)
    for (let at = pos; at < pos + len; ) {
      const b = Math.floor(at / BLOCK)
      const end = Math.min((b + 1) * BLOCK, pos + len)
      const cls = this.classOf(b)
      const st = this.stat(cls)
      st.writes++
      if (!this.routedAsMeta(b, cls)) {
        // Data: straight to the HDD; a RAM copy (from an earlier class) must not outlive it.
        this.ram.delete(blockKey(this.image, b))
        if (runLen === 0) runStart = at
        runLen += end - at
      } else {
        await flushRun()
        if (end - at < BLOCK) await this.loadBlock(b, cls, blk) // a partial write keeps the rest of the block
        buf.copy(blk, at - b * BLOCK, at - pos, end - pos)
        this.ram.set(blockKey(this.image, b), blk, priorityOf(cls))
        this.ssd.put(this.image, b, blk, cls, true)
        this.dirty.add(b)
        st.redirected++
      }
      at = end
    }
    await flushRun()
    return len
  }

  /** Durability point: the SSD transaction holding every redirected write, and the HDD file, both synced. */
  async fsync(): Promise<void> {
    await this.ssd.commit()
    await new Promise<void>((res, rej) => fs.fdatasync(this.fd, (e) => (e ? rej(e) : res())))
  }

  /** Writes dirty blocks back to the HDD file in file order (at most `limit`), syncs, then marks them clean. Returns how many. */
  async destage(limit = Infinity): Promise<number> {
    const blocks = [...this.dirty].sort((a, b) => a - b).slice(0, limit)
    if (!blocks.length) return 0
    for (const b of blocks) {
      const s = this.ssd.get(this.image, b)
      if (!s) continue
      const len = Math.min(BLOCK, this.size - b * BLOCK)
      if (len > 0) await pwriteFull(this.fd, s.data, 0, len, b * BLOCK)
    }
    await new Promise<void>((res, rej) => fs.fdatasync(this.fd, (e) => (e ? rej(e) : res())))
    for (const b of blocks) {
      this.ssd.markClean(this.image, b)
      this.dirty.delete(b)
    }
    await this.ssd.commit()
    this.destaged += blocks.length
    return blocks.length
  }

  /** The file shrank or grew: drop every copy of blocks past the new end; the last partial block is trimmed. */
  async truncate(size: number): Promise<void> {
    const first = Math.ceil(size / BLOCK)
    this.ssd.truncate(this.image, first)
    this.ram.dropImage(this.image, first)
    for (const b of [...this.dirty]) if (b >= first) this.dirty.delete(b)
    const last = Math.floor(size / BLOCK)
    if (size % BLOCK && this.dirty.has(last)) {
      // Bytes past the new end in the last block read as zeros if the file grows again.
      const blk = Buffer.alloc(BLOCK)
      this.ssd.get(this.image, last)!.data.copy(blk, 0, 0, size % BLOCK)
      this.ssd.put(this.image, last, blk, this.classOf(last), true)
      this.ram.delete(blockKey(this.image, last))
    } else if (size % BLOCK) {
      // A clean copy holds the bytes the truncate drops: only the HDD file (which zeroes them) may answer.
      this.ram.delete(blockKey(this.image, last))
      if (this.ssd.get(this.image, last)) this.ssd.delete(this.image, last)
    }
    fs.ftruncateSync(this.fd, size)
    this.size = size
  }

  get fileSize(): number {
    return this.size
  }
}
