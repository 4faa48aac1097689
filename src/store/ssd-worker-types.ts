// The messages between the SSD store and its writer thread (ssd.ts, ssd-worker.ts).

/** Numbers per put in Batch.puts. */
export const PUT_FIELDS = 6

export type WriteOp =
  | { op: 'put'; image: number; block: number; cls: number; dirty: number; data: Uint8Array }
  | { op: 'clean'; image: number; block: number }
  | { op: 'delete'; image: number; block: number }
  | { op: 'truncate'; image: number; fromBlock: number }
  | { op: 'image'; id: number; path: string; dev: number; ino: number; size: number; signature: Uint8Array }
  | { op: 'map'; id: number; data: Uint8Array | null }
  | { op: 'forget'; id: number }
  | { op: 'signature'; id: number; signature: Uint8Array }
  | { op: 'rename'; id: number; path: string }
  /** Nothing to write but a durable commit (a frame, so the FULL commit syncs the WAL). */
  | { op: 'sync' }
  | { op: 'cleanRecord'; id: number; data: Uint8Array | null }
  /** When the daemon last wrote the image's HDD file (ms since the epoch): a later change is someone else's. */
  | { op: 'written'; id: number; ms: number }
  /** A key of the meta table set (value) or removed (null): an image's learnt boot set is `boot:<id>`. */
  | { op: 'meta'; key: string; value: string | null }

export interface Batch {
  seq: number
  /** In order; a number k is the put puts[k] (image, block, cls, dirty, offset and length in blob). */
  ops: (WriteOp | number)[]
  /** Commit with synchronous=FULL: the WAL is synced, with every earlier transaction in it. */
  durable: boolean
  /** The bytes of every put, back to back (transferred, not cloned). */
  blob?: Uint8Array
  puts?: Float64Array
}
