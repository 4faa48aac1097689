// The ledger (issue 15): which blocks of which image the SSD store holds, and
// which of those are dirty (their authoritative copy), with mount-wide running
// totals for the budgets. It is the only code that adds or removes the store's
// rows of image blocks: every `present`/`dirty` change goes with the store
// operation that makes it true, so "the sets mirror the store's rows" is kept
// in one place. RAM copies are not the ledger's (the RAM tier is a cache of
// copies; dropping one loses nothing).
//
// State owned here: per image, `present` (rows held, clean or dirty) and
// `dirty` (rows whose copy is newer than the HDD file); mount-wide, their sizes
// summed. Nothing else may edit them.

import type { BlockClass } from '../introspect/classes'
import type { SsdBlock, SsdStore } from '../store/ssd'

export class Ledger {
  private held = 0
  private dirtyCount = 0
  private readonly images = new Map<number, ImageLedger>()

  constructor(readonly ssd: SsdStore) {}

  /** The ledger of one image, loaded from the store's rows on first use. */
  image(id: number): ImageLedger {
    let l = this.images.get(id)
    if (!l) {
      const rows = this.ssd.blocks(id)
      l = new ImageLedger(this, this.ssd, id, rows.present, rows.dirty)
      this.images.set(id, l)
    }
    return l
  }

  /** Stops tracking an image; its rows stay (a later image(id) reads them again). */
  release(id: number): void {
    const l = this.images.get(id)
    if (!l) return
    if (l.onRow) for (const b of l.heldBlocks()) l.onRow(b, null)
    this.adjust(-l.heldCount, -l.dirtyCount)
    this.images.delete(id)
  }

  /** An image and all its rows go (unlink, a rename over it). */
  forgetImage(id: number): void {
    this.release(id)
    this.ssd.forgetImage(id)
  }

  /** An image's rows, map and clean record go; its identity stays (it changed behind our back, nothing dirty). */
  resetImage(id: number): void {
    this.release(id)
    this.ssd.resetImage(id)
  }

  /** Rows of image `id` from block `first` on go (a truncate of a file no handle of the mount has open). */
  truncate(id: number, first: number): void {
    const l = this.images.get(id)
    if (l) l.truncate(first)
    else if (!this.ssd.failed) this.ssd.truncate(id, first)
  }

  /** Blocks the store holds for every tracked image, clean and dirty. */
  get heldTotal(): number {
    return this.held
  }

  /** Dirty blocks of every tracked image. */
  get dirtyTotal(): number {
    return this.dirtyCount
  }

  /** @internal Running totals, kept by ImageLedger. */
  adjust(held: number, dirty: number): void {
    this.held += held
    this.dirtyCount += dirty
  }
}

/** One image's rows in the SSD store. */
export class ImageLedger {
  private readonly present: Set<number>
  private readonly dirty: Set<number>

  constructor(
    private readonly owner: Ledger,
    private readonly ssd: SsdStore,
    readonly image: number,
    present: number[],
    dirty: number[],
  ) {
    this.present = new Set(present)
    this.dirty = new Set(dirty)
    owner.adjust(this.present.size, this.dirty.size)
  }

  get heldCount(): number {
    return this.present.size
  }

  get dirtyCount(): number {
    return this.dirty.size
  }

  isHeld(b: number): boolean {
    return this.present.has(b)
  }

  isDirty(b: number): boolean {
    return this.dirty.has(b)
  }

  /** The blocks held, in no particular order (a copy: callers may change the ledger while iterating). */
  heldBlocks(): number[] {
    return [...this.present]
  }

  /** The dirty blocks in ascending order, at most `limit`. */
  dirtyBlocks(limit = Infinity): number[] {
    const out = [...this.dirty].sort((a, b) => a - b)
    if (out.length > limit) out.length = limit
    return out
  }

  /** The store's copy of block b, or undefined (then the ledger stops claiming it). */
  read(b: number): SsdBlock | undefined {
    if (!this.present.has(b)) return undefined
    const s = this.ssd.get(this.image, b)
    if (!s) this.forgetRow(b)
    return s
  }

  /** Told before the store takes a copy of block b (dirty: the authority); the native data path lowers the block. */
  onCopy: ((b: number, dirty: boolean) => void) | null = null

  /** Told after every change of block b's row: now clean, dirty, or gone (null). The SSD block cache's LRU follows the rows with it. */
  onRow: ((b: number, row: 'clean' | 'dirty' | null) => void) | null = null

  /** A clean copy (preload, a load from the HDD). */
  putClean(b: number, data: Buffer, cls: BlockClass): void {
    this.onCopy?.(b, false)
    this.ssd.put(this.image, b, data, cls, false)
    this.addPresent(b)
    this.onRow?.(b, this.dirty.has(b) ? 'dirty' : 'clean')
  }

  /** A redirected write: the store's copy becomes the authority. */
  putDirty(b: number, data: Buffer, cls: BlockClass): void {
    this.onCopy?.(b, true)
    this.ssd.put(this.image, b, data, cls, true)
    this.addPresent(b)
    if (!this.dirty.has(b)) {
      this.dirty.add(b)
      this.owner.adjust(0, 1)
    }
    this.onRow?.(b, 'dirty')
  }

  /** After destage: the HDD file has the bytes; the store keeps a clean copy. */
  markClean(b: number, data: Buffer, cls: BlockClass): void {
    this.ssd.markClean(this.image, b, data, cls)
    this.clearDirty(b)
    this.onRow?.(b, 'clean')
  }

  /** The block's dirty copy is written (or was not there after all); the row stays, clean or on its way out. */
  notDirty(b: number): void {
    this.clearDirty(b)
    if (this.present.has(b)) this.onRow?.(b, 'clean')
  }

  /** The row goes (clean or dirty): the HDD file is the authority from now on. */
  drop(b: number): void {
    if (!this.present.has(b)) return
    this.ssd.delete(this.image, b)
    this.clearDirty(b)
    this.forgetRow(b)
  }

  /** Drops the row only when it is a clean copy. */
  dropClean(b: number): boolean {
    if (!this.present.has(b) || this.dirty.has(b)) return false
    this.drop(b)
    return true
  }

  /** Every clean row goes; returns how many. */
  dropAllClean(): number {
    let n = 0
    for (const b of [...this.present]) if (this.dropClean(b)) n++
    return n
  }

  /** Forgets every row from block `first` on (the file was truncated). */
  truncate(first: number): void {
    for (const b of [...this.present]) {
      if (b < first) continue
      this.forgetRow(b)
    }
    if (!this.ssd.failed) this.ssd.truncate(this.image, first)
  }

  /** The store is gone (its failover wrote everything dirty to the HDD): nothing is held. */
  clear(): void {
    if (this.onRow) for (const b of this.present) this.onRow(b, null)
    this.owner.adjust(-this.present.size, -this.dirty.size)
    this.present.clear()
    this.dirty.clear()
  }

  private addPresent(b: number): void {
    if (this.present.has(b)) return
    this.present.add(b)
    this.owner.adjust(1, 0)
  }

  private clearDirty(b: number): void {
    if (this.dirty.delete(b)) this.owner.adjust(0, -1)
  }

  private forgetRow(b: number): void {
    if (this.dirty.delete(b)) this.owner.adjust(0, -1)
    if (!this.present.delete(b)) return
    this.owner.adjust(-1, 0)
    this.onRow?.(b, null)
  }
}
