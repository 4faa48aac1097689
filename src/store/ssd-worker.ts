// The SSD store's writing connection, in its own thread (FINDINGS.md: one
// row per transaction and WAL checkpoints stall 17-33 ms; the FUSE thread must
// never wait for SQLite). Each batch of operations is one transaction,
// committed with synchronous=FULL, then acknowledged by its sequence number.

import Database from 'better-sqlite3'
import { parentPort, workerData } from 'worker_threads'

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

export interface Batch {
  seq: number
  ops: WriteOp[]
}

const db = new Database(workerData.path as string)
db.pragma('journal_mode = WAL')
db.pragma('synchronous = FULL')
db.pragma('busy_timeout = 5000')
const put = db.prepare('INSERT INTO blocks(image, block, cls, dirty, data) VALUES (?, ?, ?, ?, ?) ON CONFLICT(image, block) DO UPDATE SET cls = excluded.cls, dirty = excluded.dirty, data = excluded.data')
const clean = db.prepare('UPDATE blocks SET dirty = 0 WHERE image = ? AND block = ?')
const del = db.prepare('DELETE FROM blocks WHERE image = ? AND block = ?')
const trunc = db.prepare('DELETE FROM blocks WHERE image = ? AND block >= ?')
const image = db.prepare('INSERT INTO images(id, path, dev, ino, size, signature) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET path = excluded.path, dev = excluded.dev, ino = excluded.ino, size = excluded.size, signature = excluded.signature')
const saveMap = db.prepare('UPDATE images SET map = ? WHERE id = ?')
const forgetImage = db.prepare('DELETE FROM images WHERE id = ?')
const forgetBlocks = db.prepare('DELETE FROM blocks WHERE image = ?')
const signature = db.prepare('UPDATE images SET prev_signature = signature, signature = ? WHERE id = ?')
const rename = db.prepare('UPDATE images SET path = ? WHERE id = ?')
const buf = (u: Uint8Array) => Buffer.from(u.buffer, u.byteOffset, u.byteLength)

const apply = db.transaction((ops: WriteOp[]) => {
  for (const o of ops) {
    if (o.op === 'put') put.run(o.image, o.block, o.cls, o.dirty, buf(o.data))
    else if (o.op === 'clean') clean.run(o.image, o.block)
    else if (o.op === 'delete') del.run(o.image, o.block)
    else if (o.op === 'truncate') trunc.run(o.image, o.fromBlock)
    else if (o.op === 'image') image.run(o.id, o.path, o.dev, o.ino, o.size, buf(o.signature))
    else if (o.op === 'map') saveMap.run(o.data ? buf(o.data) : null, o.id)
    else if (o.op === 'signature') signature.run(buf(o.signature), o.id)
    else if (o.op === 'rename') rename.run(o.path, o.id)
    else {
      forgetBlocks.run(o.id)
      forgetImage.run(o.id)
    }
  }
})

parentPort!.on('message', (m: Batch | { close: true }) => {
  if ('close' in m) {
    db.close()
    parentPort!.postMessage({ closed: true })
    return
  }
  try {
    apply(m.ops)
    parentPort!.postMessage({ seq: m.seq })
  } catch (e) {
    parentPort!.postMessage({ seq: m.seq, error: (e as Error).message })
  }
})
