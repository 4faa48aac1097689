// The SSD tier: a better-sqlite3 block store (FINDINGS.md: a rowid table
// with a UNIQUE index on (image, block), WAL). Reads run on the calling
// thread on a read-only connection; every write goes to a worker thread that
// owns the writing connection (ssd-worker.ts). Writes not yet committed are
// kept in `pending`, so reads always see the latest put. commit() resolves
// once everything queued before it is durable: the guest's fsync waits on it.

import Database from 'better-sqlite3'
import fs from 'fs'
import path from 'path'
import { Worker } from 'worker_threads'
import { PROJECT_ROOT } from '../root'
import { splitKey } from '../native/constants'
import { blockKey } from './ram'
import { PUT_FIELDS, type Batch, type WriteOp } from './ssd-worker-types'

export const SCHEMA_VERSION = 4
/** How long queued writes gather before they go to the writer thread (a commit() sends them at once). */
const FLUSH_GATHER_MS = 5

export interface SsdBlock {
  data: Buffer
  cls: number
  dirty: boolean
}

/** What identifies an image file across restarts: where it is, which inode, how big, and a digest of its header. */
export interface ImageIdentity {
  path: string
  dev: number
  ino: number
  size: number
  /** A digest of the container header / superblock (the caller's choice, compared byte for byte). */
  signature: Buffer
}

/** An image's row: its identity when last registered, the previous header signature (accepted too), its saved map and clean-unmount record. */
export interface ImageRecord extends ImageIdentity {
  id: number
  /** The signature before the last setSignature (null: none, or registered by this process). */
  prev: Buffer | null
  map: Buffer | null
  clean: Buffer | null
  /** When the daemon last wrote the file, as last recorded (ms since the epoch; null: never recorded). */
  written: number | null
}

export class SsdError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'SsdError'
  }
}

export class SsdStore {
  private readonly db: Database.Database
  private readonly worker: Worker
  private readonly getStmt: Database.Statement
  private readonly blocksStmt: Database.Statement
  private readonly idStmt: Database.Statement
  private readonly dirtyStmt: Database.Statement
  private readonly recordStmt: Database.Statement
  /** Puts and deletes not yet acknowledged by the worker, by block key (null: deleted). */
  private readonly pending = new Map<number, { seq: number; block: SsdBlock | null }>()
  /** Truncates not yet acknowledged: until then the rows they delete must not be read. */
  private pendingTruncates: { image: number; fromBlock: number; seq: number }[] = []
  private queue: WriteOp[] = []
  private seq = 0
  private acked = 0
  private readonly waiters: { seq: number; resolve: () => void; reject: (e: Error) => void }[] = []
  private flushScheduled = false
  /** Batches sent and not yet acknowledged: at most one, so one transaction (one WAL sync) carries everything queued meanwhile. */
  private inFlight = 0
  /** Queue index of the latest put of each block key (a newer put replaces it in place). */
  private queuedPut = new Map<number, number>()
  /** Ops were queued since the last durable batch was sent; and that batch's number. */
  private sinceDurable = false
  private durableSeq = 0
  /** The next batch must reach the disk (a commit() waits for it). */
  private durableWanted = false
  private failure: Error | null = null
  private nextImage = 1
  /** Images registered by this process, by path: the worker may not have written their row yet. */
  private readonly registered = new Map<string, ImageIdentity & { id: number }>()
  /** Boot sets saved by this process (bootSet answers them before the writer commits). */
  private readonly bootSets = new Map<number, Array<[number, number]> | null>()
  /** Called once when a write transaction fails (disk full, I/O error): the owner stops redirecting. */
  onFailure: ((e: Error) => void) | null = null

  /** The first write failure, if any: from then on nothing more is written. */
  get failed(): Error | null {
    return this.failure
  }

  private constructor(readonly path: string, db: Database.Database, worker: Worker) {
    this.db = db
    this.worker = worker
    this.getStmt = db.prepare('SELECT data, cls, dirty FROM blocks WHERE image = ? AND block = ?')
    // Asked on every open of a file of the store: prepared once.
    this.idStmt = db.prepare('SELECT id FROM images WHERE path = ?')
    this.blocksStmt = db.prepare('SELECT block, dirty FROM blocks WHERE image = ?')
    this.dirtyStmt = db.prepare('SELECT block, dirty FROM blocks WHERE image = ? AND dirty = 1')
    this.recordStmt = db.prepare('SELECT id, path, dev, ino, size, signature, prev_signature AS prev, map, clean, written FROM images WHERE path = ?')
    const max = db.prepare('SELECT max(id) AS m FROM images').get() as { m: number | null }
    this.nextImage = (max.m ?? 0) + 1
    worker.on('message', (m: { seq?: number; error?: string }) => {
      const seq = m.seq
      if (seq === undefined) return
      this.inFlight = Math.max(0, this.inFlight - 1)
      if (m.error) {
        // The batch was rolled back: its blocks stay in `pending` (readable, and the
        // only copy of what it held) until the owner writes them elsewhere.
        this.failure ??= new SsdError(`SSD store ${this.path}: ${m.error}`)
        this.onFailure?.(this.failure)
      } else {
        for (const [k, p] of this.pending) if (p.seq <= seq) this.pending.delete(k)
        this.pendingTruncates = this.pendingTruncates.filter((t) => t.seq > seq)
      }
      this.acked = seq
      if (this.queue.length) this.flush()
      for (let i = this.waiters.length - 1; i >= 0; i--) {
        const w = this.waiters[i]
        if (w.seq > seq) continue
        this.waiters.splice(i, 1)
        if (this.failure) w.reject(this.failure)
        else w.resolve()
      }
    })
    worker.on('error', (e) => {
      this.failure = new SsdError(`SSD store ${this.path}: writer thread failed: ${e.message}`)
      this.onFailure?.(this.failure)
      for (const w of this.waiters.splice(0)) w.reject(this.failure)
    })
  }

  /** Opens (creating when missing) the store at `file`. A file that is not our store is refused with a message naming it. */
  static open(file: string): SsdStore {
    fs.mkdirSync(path.dirname(file), { recursive: true })
    let db: Database.Database
    try {
      db = new Database(file)
      db.pragma('journal_mode = WAL')
      db.pragma('page_size = 4096')
      db.exec(`
        CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE IF NOT EXISTS blocks(id INTEGER PRIMARY KEY, image INTEGER NOT NULL, block INTEGER NOT NULL,
          cls INTEGER NOT NULL, dirty INTEGER NOT NULL, data BLOB NOT NULL, UNIQUE(image, block));
        CREATE INDEX IF NOT EXISTS blocks_dirty ON blocks(image, dirty);
        CREATE TABLE IF NOT EXISTS images(id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, dev INTEGER NOT NULL,
          ino INTEGER NOT NULL, size INTEGER NOT NULL, signature BLOB NOT NULL, map BLOB, prev_signature BLOB, clean BLOB, written INTEGER);
      `)
      const v = db.prepare("SELECT value FROM meta WHERE key = 'schema'").get() as { value: string } | undefined
      if (!v) db.prepare("INSERT INTO meta(key, value) VALUES ('schema', ?)").run(String(SCHEMA_VERSION))
      else if (Number(v.value) === 2 || Number(v.value) === 3) {
        // Version 3 added the clean-unmount record, version 4 when the daemon last wrote each image.
        if (Number(v.value) === 2) db.exec('ALTER TABLE images ADD COLUMN clean BLOB')
        db.exec('ALTER TABLE images ADD COLUMN written INTEGER')
        db.prepare("UPDATE meta SET value = ? WHERE key = 'schema'").run(String(SCHEMA_VERSION))
      } else if (Number(v.value) !== SCHEMA_VERSION) throw new SsdError(`schema version ${v.value}, this vmdi-fuse reads ${SCHEMA_VERSION}`)
      // The reader never checkpoints: the writer thread owns that.
      db.pragma('wal_autocheckpoint = 0')
    } catch (e) {
      throw new SsdError(`SSD store ${file} is not usable: ${(e as Error).message} (move it aside to start with an empty store)`)
    }
    // The compiled worker (a thread loads JavaScript; under vitest this module itself runs from src/).
    const worker = new Worker(path.join(PROJECT_ROOT, 'dist', 'src', 'store', 'ssd-worker.js'), { workerData: { path: file } })
    worker.unref()
    return new SsdStore(file, db, worker)
  }

  get(image: number, block: number): SsdBlock | undefined {
    const p = this.pending.get(blockKey(image, block))
    if (p) return p.block ?? undefined
    if (this.pendingTruncates.some((t) => t.image === image && block >= t.fromBlock)) return undefined
    const row = this.getStmt.get(image, block) as { data: Buffer; cls: number; dirty: number } | undefined
    return row ? { data: row.data, cls: row.cls, dirty: row.dirty !== 0 } : undefined
  }

  private enqueue(op: WriteOp, key: number | null, block: SsdBlock | null): void {
    // After a failure nothing more is written (the owner was told through onFailure
    // and stops redirecting); callers never have to guard their bookkeeping writes.
    if (this.failure) return
    this.sinceDurable = true
    if (key !== null) this.pending.set(key, { seq: this.seq + 1, block })
    if (op.op === 'put' && key !== null) {
      // A block rewritten before its previous put left: one row write, not two.
      const at = this.queuedPut.get(key)
      if (at !== undefined) {
        this.queue[at] = op
        return
      }
      this.queuedPut.set(key, this.queue.length)
    } else if (key !== null) this.queuedPut.delete(key)
    else if (op.op === 'truncate' || op.op === 'forget') this.queuedPut.clear()
    this.queue.push(op)
    if (this.queue.length >= 512) this.flush()
    else if (!this.flushScheduled) {
      // A short gather window: at queue depth 1 every write would otherwise be its own
      // transaction, and the writer thread's CPU is taken from the FUSE threads (2 cores here).
      this.flushScheduled = true
      setTimeout(() => this.flush(), FLUSH_GATHER_MS)
    }
  }

  /** Sends what is queued as one transaction (durable when a commit waits for it). */
  private flush(): void {
    this.flushScheduled = false
    if (!this.queue.length || this.inFlight > 0) return
    const batch: Batch = { seq: ++this.seq, ops: this.queue, durable: this.durableWanted }
    if (batch.durable) {
      this.durableSeq = batch.seq
      this.sinceDurable = false
      this.durableWanted = false
    }
    // Puts travel as numbers in one transferred Float64Array and their bytes in one
    // transferred buffer: structured clones of thousands of small objects and 4 KiB
    // buffers cost more main-thread time than the writes themselves.
    let bytes = 0
    let puts = 0
    const queued = this.queue
    for (const o of queued) if (o.op === 'put') (bytes += o.data.byteLength), puts++
    if (puts) {
      const blob = new Uint8Array(bytes)
      const nums = new Float64Array(puts * PUT_FIELDS)
      let at = 0
      let k = 0
      batch.ops = queued.map((o) => {
        if (o.op !== 'put') return o
        blob.set(o.data, at)
        nums.set([o.image, o.block, o.cls, o.dirty, at, o.data.byteLength], k * PUT_FIELDS)
        at += o.data.byteLength
        return k++
      })
      batch.blob = blob
      batch.puts = nums
    }
    this.queue = []
    this.queuedPut.clear()
    this.inFlight++
    this.worker.postMessage(batch, batch.blob && batch.puts ? [batch.blob.buffer as ArrayBuffer, batch.puts.buffer as ArrayBuffer] : [])
  }

  put(image: number, block: number, data: Buffer, cls: number, dirty: boolean): void {
    const copy = Buffer.from(data)
    this.enqueue({ op: 'put', image, block, cls, dirty: dirty ? 1 : 0, data: copy }, blockKey(image, block), { data: copy, cls, dirty })
  }

  /** Marks a block clean after its bytes reached the HDD file (destage). */
  /** The block's copy is on the HDD now; `data` and `cls`: its bytes, when the caller has them (saves a read). */
  markClean(image: number, block: number, data?: Buffer, cls?: number): void {
    const cur = data && cls !== undefined ? { data, cls, dirty: false } : this.get(image, block)
    this.enqueue({ op: 'clean', image, block }, blockKey(image, block), cur ? { ...cur, dirty: false } : null)
  }

  delete(image: number, block: number): void {
    this.enqueue({ op: 'delete', image, block }, blockKey(image, block), null)
  }

  /** Forgets every block of an image at or after `fromBlock` (truncate; 0: unlink). */
  truncate(image: number, fromBlock: number): void {
    for (const [k] of this.pending) if (k >= blockKey(image, fromBlock) && k < blockKey(image + 1, 0)) this.pending.set(k, { seq: this.seq + 1, block: null })
    this.pendingTruncates.push({ image, fromBlock, seq: this.seq + 1 })
    this.enqueue({ op: 'truncate', image, fromBlock }, null, null)
  }

  /**
   * The image registered at `path`, or null. What this process registered is
   * read back before its row is written (the writer thread may not have got
   * to it yet): its identity, no previous signature, no clean record, and the
   * stored map while the row is the same image.
   */
  imageRecord(p: string): ImageRecord | null {
    const stored = this.recordStmt.get(p) as ImageRecord | undefined
    const mine = this.registered.get(p)
    if (mine) return { ...mine, prev: null, map: stored?.id === mine.id ? stored.map : null, clean: null, written: stored?.id === mine.id ? stored.written : null }
    return stored ?? null
  }

  /** A row for a new image at who.path, under a fresh id. */
  createImage(who: ImageIdentity): number {
    const id = this.nextImage++
    this.registered.set(who.path, { ...who, signature: Buffer.from(who.signature), id })
    this.enqueue({ op: 'image', id, path: who.path, dev: who.dev, ino: who.ino, size: who.size, signature: Buffer.from(who.signature) }, null, null)
    return id
  }

  /**
   * Image `id` is registered at who.path with who's identity from now on (what
   * imageRecord reads back in this process); `write` false: its row is left as
   * it is (it already says the same).
   */
  updateIdentity(id: number, who: ImageIdentity, write = true): void {
    this.registered.set(who.path, { ...who, signature: Buffer.from(who.signature), id })
    if (write) this.enqueue({ op: 'image', id, path: who.path, dev: who.dev, ino: who.ino, size: who.size, signature: Buffer.from(who.signature) }, null, null)
  }

  /** The daemon wrote image `id`'s HDD file at `ms` (ms since the epoch): a later change of the file is someone else's. */
  noteWritten(id: number, ms: number): void {
    this.enqueue({ op: 'written', id, ms }, null, null)
  }

  /**
   * Records the new signature of an image whose signature block we are about to
   * write to the HDD file; the old one stays accepted until the next change.
   */
  setSignature(id: number, signature: Buffer): void {
    for (const r of this.registered.values()) if (r.id === id) r.signature = Buffer.from(signature)
    this.enqueue({ op: 'signature', id, signature: Buffer.from(signature) }, null, null)
  }

  /** The image at `from` is now at `to` (a rename in the store); an image registered at `to` is forgotten first. */
  renameImage(from: string, to: string): void {
    const target = this.imageId(to)
    if (target !== null) this.forgetImage(target)
    const id = this.imageId(from)
    if (id === null) return
    const r = this.registered.get(from)
    this.registered.delete(from)
    if (r) this.registered.set(to, { ...r, path: to })
    this.enqueue({ op: 'rename', id, path: to }, null, null)
  }

  /** The id an image path is registered under (this process or a previous one), or null. */
  imageId(p: string): number | null {
    const mine = this.registered.get(p)
    if (mine) return mine.id
    const row = this.idStmt.get(p) as { id: number } | undefined
    return row?.id ?? null
  }

  /** Every registered image: path, id and how many dirty blocks it has. */
  images(): { id: number; path: string; dirtyBlocks: number }[] {
    const rows = this.db.prepare('SELECT id, path FROM images ORDER BY path').all() as { id: number; path: string }[]
    return rows.map((r) => ({ ...r, dirtyBlocks: this.dirtyBlocks(r.id).length }))
  }

  /** Blocks of an image the store holds (committed and pending), and which of them are dirty. */
  blocks(image: number): { present: number[]; dirty: number[] } {
    const held = this.held(image, false)
    const present = [...held.keys()].sort((a, b) => a - b)
    return { present, dirty: present.filter((b) => held.get(b)) }
  }

  /** Block → dirty, from the rows (all, or the dirty ones) with the pending writes and truncates over them. */
  private held(image: number, dirtyOnly: boolean): Map<number, boolean> {
    const rows = (dirtyOnly ? this.dirtyStmt : this.blocksStmt).all(image) as { block: number; dirty: number }[]
    const out = new Map<number, boolean>()
    for (const r of rows) if (!this.pendingTruncates.some((t) => t.image === image && r.block >= t.fromBlock)) out.set(r.block, r.dirty !== 0)
    for (const [k, p] of this.pending) {
      const { image: im, block: b } = splitKey(k)
      if (im !== image) continue
      if (p.block && (p.block.dirty || !dirtyOnly)) out.set(b, p.block.dirty)
      else out.delete(b)
    }
    return out
  }

  /** Takes the image's current identity as its own (after `recover --apply` made them agree). */
  adoptIdentity(id: number, who: ImageIdentity): void {
    for (const [p, r] of this.registered) if (r.id === id) this.registered.delete(p)
    this.enqueue({ op: 'image', id, path: who.path, dev: who.dev, ino: who.ino, size: who.size, signature: Buffer.from(who.signature) }, null, null)
    this.enqueue({ op: 'signature', id, signature: Buffer.from(who.signature) }, null, null)
  }

  /**
   * The record a clean unmount leaves (the file's mtime and size after our last write,
   * and the file systems' saved states); null clears it (done at attach, so a crash leaves none).
   */
  saveCleanRecord(id: number, data: Buffer | null): void {
    this.enqueue({ op: 'cleanRecord', id, data: data ? Buffer.from(data) : null }, null, null)
  }

  /** Drops an image's blocks, map and clean record (it changed behind our back; it has no dirty blocks). */
  resetImage(id: number): void {
    this.saveBootSet(id, null)
    this.truncate(id, 0)
    this.enqueue({ op: 'map', id, data: null }, null, null)
    this.enqueue({ op: 'cleanRecord', id, data: null }, null, null)
  }

  /** Keeps an image's serialised map (ExtentMap.serialize) for the next mount. */
  saveMap(id: number, map: Buffer): void {
    this.enqueue({ op: 'map', id, data: Buffer.from(map) }, null, null)
  }

  /** Forgets an image and all its blocks (unlink, or `recover --discard`). */
  forgetImage(id: number): void {
    for (const [p, r] of this.registered) if (r.id === id) this.registered.delete(p)
    this.truncate(id, 0)
    this.enqueue({ op: 'forget', id }, null, null)
    this.saveBootSet(id, null)
  }

  /**
   * The blocks an image's VM read during its last boot, as ascending runs
   * [firstBlock, count] (vm-start.ts), or null. Kept in the meta table under
   * `boot:<id>` as JSON (a hint: no schema change); what this process saved
   * is answered from memory (the writer thread may not have committed it yet).
   */
  bootSet(id: number): Array<[number, number]> | null {
    if (this.bootSets.has(id)) return this.bootSets.get(id) ?? null
    try {
      const row = this.db.prepare('SELECT value FROM meta WHERE key = ?').get(`boot:${id}`) as { value: string } | undefined
      const runs = row ? (JSON.parse(row.value) as unknown) : null
      const ok = Array.isArray(runs) && runs.every((r) => Array.isArray(r) && r.length === 2 && r.every((x) => Number.isSafeInteger(x) && x >= 0))
      return ok ? (runs as Array<[number, number]>) : null
    } catch {
      return null
    }
  }

  /** Keeps (or, null, forgets) an image's learnt boot set. */
  saveBootSet(id: number, runs: Array<[number, number]> | null): void {
    this.bootSets.set(id, runs)
    this.enqueue({ op: 'meta', key: `boot:${id}`, value: runs ? JSON.stringify(runs) : null }, null, null)
  }

  /**
   * Resolves when every write queued so far is durable. Batches are committed
   * with synchronous=NORMAL (in WAL mode: safe against a crash of the daemon,
   * not of the machine) and the one a commit waits for with synchronous=FULL,
   * whose WAL sync covers every frame before it.
   */
  commit(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure)
    let target: number
    if (!this.sinceDurable) target = this.durableSeq
    else {
      this.durableWanted = true
      if (!this.queue.length) this.queue.push({ op: 'sync' })
      this.flush()
      // Still queued (a batch is in flight): it goes out, durable, when that one is acknowledged.
      target = this.queue.length ? this.seq + 1 : this.durableSeq
    }
    if (this.acked >= target) return Promise.resolve()
    return new Promise((resolve, reject) => this.waiters.push({ seq: target, resolve, reject }))
  }

  /**
   * commit(), for callers whose data does not depend on the store: a store that
   * has failed (before or during this commit) resolves instead of rejecting,
   * since its owner's failover (onFailure) takes over what it held.
   */
  async commitUnlessFailed(): Promise<void> {
    if (this.failure) return
    try {
      await this.commit()
    } catch (e) {
      if (!this.failure) throw e
    }
  }

  /** Dirty blocks of an image, in block order (committed and pending). */
  dirtyBlocks(image: number): number[] {
    return [...this.held(image, true).keys()].sort((a, b) => a - b)
  }

  /** Removes the store's files (after a failure, once what it held is on the HDD): its copies are stale from now on. */
  abandon(): void {
    for (const f of [this.path, `${this.path}-wal`, `${this.path}-shm`]) fs.rmSync(f, { force: true })
  }

  async close(): Promise<void> {
    await this.commit().catch(() => undefined)
    await new Promise<void>((resolve) => {
      this.worker.once('message', () => resolve())
      this.worker.postMessage({ close: true })
    })
    await this.worker.terminate()
    this.db.close()
  }
}
