// The RAM tier: 4 KiB blocks in large slab Buffers, with lru-cache holding
// slot numbers under numeric keys (FINDINGS.md: one Buffer per entry costs
// 4.6 GiB and 179 ms GC pauses at 1M blocks; slabs and numbers do not). One
// LRU per class priority: eviction takes the least recently used block of the
// lowest priority present, so one VM's data-heavy scan or `find` over its
// directories cannot push out another VM's superblocks and inode tables.
// A copy, never the authority: dropping any block here loses nothing.
//
// Shares (issue 18): with a floor per image (`floorOf`, set by the datapath:
// by default a fair share of the budget), a block of meta-data priority (> 0)
// of an image holding no more than its floor is not evicted for another
// image's block: one VM with large meta-data cannot take all of it from the
// others. Priority-0 blocks (data read ahead) have no floor.
//
// A mirror (the patched binding, see RamMirror) can serve meta-data blocks on
// the libfuse thread: every change of a slot's bytes or owner then goes
// through it under its lock, and the reads it served come back through
// `touch` (recency) so the LRU sees them.

import { LRUCache } from 'lru-cache'
// Shared with the binding's C (native/vmdi_constants.h): block size, slab size, key layout.
import { BLOCK_SIZE, SLAB_BLOCKS, blockKey, splitKey } from '../native/constants'

/** Protected blocks an eviction moves to the recent end at a time while it looks for one it may take. */
const VICTIM_SCAN = 256

export const BLOCK = BLOCK_SIZE
/** image id and 4 KiB block number in one number (ids below 2^20, blocks below 2^32). */
export { blockKey }

export interface RamStats {
  hits: number
  misses: number
  evictions: number
  blocks: number
  capacity: number
}

/**
 * The binding's native index of this cache (fuse-native as patched): it reads
 * the slabs on the libfuse threads, so the slot's bytes and owner change only
 * through it, under its lock.
 */
export interface RamMirror {
  slab(index: number, slab: Buffer): void
  /**
   * The slot's bytes become src[0..4096); it is indexed under key when servable
   * (else not at all). False: the mirror could not (the slot is then not indexed).
   */
  store(slot: number, key: number, src: Buffer, servable: boolean): boolean
  drop(slot: number): void
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
  private mirror: RamMirror | null = null
  /** Told of every key before its copy is stored (the native data path stops native writes of the block). */
  onSet: ((key: number) => void) | null = null
  /** Counts the hits the mirror answered so far (the datapath's RAM drain), for a caller that needs them before its own request. */
  drainNative: (() => void) | null = null

  /** Whether a mirror answers reads of servable blocks (the binding's RAM index). */
  get mirrored(): boolean {
    return this.mirror !== null
  }
  /** Blocks of meta-data priority (> 0) an image keeps against other images' blocks (null: no floors). */
  floorOf: ((image: number) => number) | null = null
  /** Per image: its blocks of priority > 0, and all its blocks. */
  private readonly metaCount = new Map<number, number>()
  private readonly allCount = new Map<number, number>()
  /** Per slot: may the mirror answer reads of it (set with a class: meta-data routed). */
  private readonly servable: Uint8Array

  constructor(budgetBytes: number, levels = 5) {
    this.capacity = Math.max(0, Math.floor(budgetBytes / BLOCK))
    this.servable = new Uint8Array(this.capacity)
    for (let i = 0; i < levels; i++) this.lrus.push(new LRUCache<number, number>({ max: Math.max(1, this.capacity) }))
    this.stats = { hits: 0, misses: 0, evictions: 0, blocks: 0, capacity: this.capacity }
  }

  /** Hands the slabs and every cached block to a mirror; from now on it sees every change. */
  attachMirror(m: RamMirror): void {
    this.mirror = m
    this.slabs.forEach((slab, i) => m.slab(i, slab))
    for (const [key, lvl] of this.level) {
      const slot = this.lrus[lvl].peek(key) as number
      m.store(slot, key, this.slot(slot), this.servable[slot] === 1)
    }
  }

  /** A read the mirror served: the block counts as used now (LRU recency) and as a hit. */
  touch(key: number): void {
    const lvl = this.level.get(key)
    if (lvl === undefined) return
    this.lrus[lvl].get(key)
    this.stats.hits++
  }

  /** Writes a slot's bytes (through the mirror when there is one: it reads them on other threads). */
  private fill(slot: number, key: number, data: Buffer, servable: boolean): void {
    this.servable[slot] = servable ? 1 : 0
    if (this.mirror?.store(slot, key, data.length === BLOCK ? data : data.subarray(0, BLOCK), servable)) return
    this.servable[slot] = 0
    data.copy(this.slot(slot), 0, 0, BLOCK)
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
    if (this.nextSlot % SLAB_BLOCKS === 0) {
      this.slabs.push(Buffer.allocUnsafe(Math.min(SLAB_BLOCKS, this.capacity - this.nextSlot) * BLOCK))
      this.mirror?.slab(this.slabs.length - 1, this.slabs[this.slabs.length - 1])
    }
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

  /** Copies the cached block into dst without counting a hit or refreshing its place (a background copy); false on a miss. */
  peek(key: number, dst: Buffer): boolean {
    const lvl = this.level.get(key)
    if (lvl === undefined) return false
    this.slot(this.lrus[lvl].peek(key) as number).copy(dst)
    return true
  }

  /** Every slot holds a block: a new one would evict. */
  get full(): boolean {
    return this.level.size >= this.capacity
  }

  /**
   * Caches a copy of `data` (4 KiB) at `priority`. When full, the least
   * recently used block of the lowest non-empty priority goes, if that
   * priority is not above this block's; otherwise this block is not cached.
   * `servable`: a mirror may answer reads of it on its own (meta-data-routed
   * blocks; read-ahead data stays with the router, which watches sequential
   * readers).
   */
  set(key: number, data: Buffer, priority: number, servable = false): void {
    if (this.capacity === 0) return
    this.onSet?.(key)
    const p = Math.max(0, Math.min(this.lrus.length - 1, priority))
    const old = this.level.get(key)
    if (old !== undefined) {
      const slot = this.lrus[old].get(key) as number
      this.fill(slot, key, data, servable)
      if (old !== p) {
        this.lrus[old].delete(key)
        this.lrus[p].set(key, slot)
        this.count(key, old, -1, false)
        this.level.set(key, p)
        this.count(key, p, 1, false)
      }
      return
    }
    let slot = this.allocate()
    if (slot === null) {
      const victim = this.victim(splitKey(key).image, p)
      if (!victim) return
      const [vkey, vslot, vlvl] = victim
      this.level.delete(vkey)
      this.count(vkey, vlvl, -1, true)
      this.stats.evictions++
      slot = vslot
    }
    this.fill(slot, key, data, servable)
    this.lrus[p].set(key, slot)
    this.level.set(key, p)
    this.count(key, p, 1, true)
    this.stats.blocks = this.level.size
  }

  /** Per-image counts: `all` with the block's arrival or departure, meta-data (priority > 0) always. */
  private count(key: number, lvl: number, d: number, all: boolean): void {
    const { image } = splitKey(key)
    if (all) this.allCount.set(image, (this.allCount.get(image) ?? 0) + d)
    if (lvl > 0) this.metaCount.set(image, (this.metaCount.get(image) ?? 0) + d)
  }

  /**
   * The block to evict for one of `image` at priority p: the least recently used
   * of the lowest non-empty priority not above p whose image is `image` itself or
   * holds more than its floor (priority 0 has no floor); null: none, the new
   * block is not cached.
   */
  private victim(image: number, p: number): [number, number, number] | null {
    for (let lvl = 0; lvl <= p && lvl < this.lrus.length; lvl++) {
      const lru = this.lrus[lvl]
      // Protected blocks met on the way go to the recent end (a second chance, as a clock
      // would), so the next eviction does not walk them again; at most the level's size in all.
      for (let seen = 0; seen < lru.size; ) {
        const protectedKeys: number[] = []
        let found: number | null = null
        for (const key of lru.rkeys()) {
          const owner = splitKey(key).image
          if (lvl === 0 || !this.floorOf || owner === image || (this.metaCount.get(owner) ?? 0) > this.floorOf(owner)) {
            found = key
            break
          }
          protectedKeys.push(key)
          if (protectedKeys.length >= VICTIM_SCAN) break
        }
        for (const k of protectedKeys) lru.get(k)
        seen += protectedKeys.length
        if (found !== null) {
          const slot = lru.peek(found) as number
          lru.delete(found)
          return [found, slot, lvl]
        }
        if (protectedKeys.length < VICTIM_SCAN) break
      }
    }
    return null
  }

  /** The priority a block is cached at, or -1. */
  priorityOf(key: number): number {
    return this.level.get(key) ?? -1
  }

  /** A cached block moves to priority p (its bytes and recency stay); false when it is not cached. */
  setPriority(key: number, priority: number): boolean {
    const old = this.level.get(key)
    if (old === undefined) return false
    const p = Math.max(0, Math.min(this.lrus.length - 1, priority))
    if (p === old) return true
    const slot = this.lrus[old].peek(key) as number
    this.lrus[old].delete(key)
    this.count(key, old, -1, false)
    this.lrus[p].set(key, slot)
    this.level.set(key, p)
    this.count(key, p, 1, false)
    return true
  }

  /** Blocks of `image` in RAM now: all of them, and those of meta-data priority (> 0). */
  countOf(image: number): { blocks: number; metaBlocks: number } {
    return { blocks: this.allCount.get(image) ?? 0, metaBlocks: this.metaCount.get(image) ?? 0 }
  }

  delete(key: number): void {
    const lvl = this.level.get(key)
    if (lvl === undefined) return
    const slot = this.lrus[lvl].peek(key) as number
    this.lrus[lvl].delete(key)
    this.level.delete(key)
    this.count(key, lvl, -1, true)
    this.mirror?.drop(slot)
    this.free.push(slot)
    this.stats.blocks = this.level.size
  }

  /** The blocks of `image` cached now. */
  blocksOf(image: number): number[] {
    const lo = blockKey(image, 0)
    const hi = blockKey(image + 1, 0)
    const out: number[] = []
    for (const key of this.level.keys()) if (key >= lo && key < hi) out.push(key - lo)
    return out
  }

  /** Drops every block of an image at or after `fromBlock` (truncate, unlink). */
  dropImage(image: number, fromBlock = 0): void {
    const lo = blockKey(image, fromBlock)
    const hi = blockKey(image + 1, 0)
    for (const key of [...this.level.keys()]) if (key >= lo && key < hi) this.delete(key)
  }
}
