// The RAM tier: 4 KiB blocks in large slab Buffers, with lru-cache holding
// slot numbers under numeric keys (FINDINGS.md: one Buffer per entry costs
// 4.6 GiB and 179 ms GC pauses at 1M blocks; slabs and numbers do not). One
// LRU per class priority: eviction takes the least recently used block of the
// lowest priority present, so one VM's data-heavy scan or `find` over its
// directories cannot push out another VM's superblocks and inode tables.
// A copy, never the authority: dropping any block here loses nothing.

import { LRUCache } from 'lru-cache'

export const BLOCK = 4096
const SLAB_BLOCKS = 4096 // 16 MiB per slab

/** image id and 4 KiB block number in one number (ids below 2^20, blocks below 2^32). */
export function blockKey(image: number, block: number): number {
  return image * 0x1_0000_0000 + block
}

export interface RamStats {
  hits: number
  misses: number
  evictions: number
  blocks: number
  capacity: number
}

export class RamCache {
  readonly capacity: number
  private readonly slabs: Buffer[] = []
  private readonly free: number[] = []
  private nextSlot = 0
  /** One LRU per priority level (index = priority). */
  private readonly lrus: LRUCache<number, number>[] = []
  private readonly level = new Map<number, number>()
  readonly stats: RamStats

  constructor(budgetBytes: number, levels = 5) {
    this.capacity = Math.max(0, Math.floor(budgetBytes / BLOCK))
    for (let i = 0; i < levels; i++) this.lrus.push(new LRUCache<number, number>({ max: Math.max(1, this.capacity) }))
    this.stats = { hits: 0, misses: 0, evictions: 0, blocks: 0, capacity: this.capacity }
  }

  private slot(n: number): Buffer {
    const slab = this.slabs[Math.floor(n / SLAB_BLOCKS)]
    const at = (n % SLAB_BLOCKS) * BLOCK
    return slab.subarray(at, at + BLOCK)
  }

  private allocate(): number | null {
    const f = this.free.pop()
    if (f !== undefined) return f
    if (this.nextSlot >= this.capacity) return null
    if (this.nextSlot % SLAB_BLOCKS === 0) this.slabs.push(Buffer.allocUnsafe(Math.min(SLAB_BLOCKS, this.capacity - this.nextSlot) * BLOCK))
    return this.nextSlot++
  }

  /** Copies the cached block into dst at dstOffset; false on a miss. */
  get(key: number, dst: Buffer, dstOffset = 0): boolean {
    const lvl = this.level.get(key)
    if (lvl === undefined) {
      this.stats.misses++
      return false
    }
    const slot = this.lrus[lvl].get(key) as number
    this.slot(slot).copy(dst, dstOffset)
    this.stats.hits++
    return true
  }

  has(key: number): boolean {
    return this.level.has(key)
  }

  /**
   * Caches a copy of `data` (4 KiB) at `priority`. When full, the least
   * recently used block of the lowest non-empty priority goes, if that
   * priority is not above this block's; otherwise this block is not cached.
   */
  set(key: number, data: Buffer, priority: number): void {
    if (this.capacity === 0) return
    const p = Math.max(0, Math.min(this.lrus.length - 1, priority))
    const old = this.level.get(key)
    if (old !== undefined) {
      const slot = this.lrus[old].get(key) as number
      data.copy(this.slot(slot), 0, 0, BLOCK)
      if (old !== p) {
        this.lrus[old].delete(key)
        this.lrus[p].set(key, slot)
        this.level.set(key, p)
      }
      return
    }
    let slot = this.allocate()
    if (slot === null) {
      const victim = this.lrus.findIndex((l) => l.size > 0)
      if (victim < 0 || victim > p) return
      const [vkey, vslot] = this.popOldest(victim)
      this.level.delete(vkey)
      this.stats.evictions++
      slot = vslot
    }
    data.copy(this.slot(slot), 0, 0, BLOCK)
    this.lrus[p].set(key, slot)
    this.level.set(key, p)
    this.stats.blocks = this.level.size
  }

  private popOldest(level: number): [number, number] {
    const lru = this.lrus[level]
    const key = lru.rkeys().next().value as number
    const slot = lru.peek(key) as number
    lru.delete(key)
    return [key, slot]
  }

  delete(key: number): void {
    const lvl = this.level.get(key)
    if (lvl === undefined) return
    const slot = this.lrus[lvl].peek(key) as number
    this.lrus[lvl].delete(key)
    this.level.delete(key)
    this.free.push(slot)
    this.stats.blocks = this.level.size
  }

  /** Drops every block of an image at or after `fromBlock` (truncate, unlink). */
  dropImage(image: number, fromBlock = 0): void {
    const lo = blockKey(image, fromBlock)
    const hi = blockKey(image + 1, 0)
    for (const key of [...this.level.keys()]) if (key >= lo && key < hi) this.delete(key)
  }
}
