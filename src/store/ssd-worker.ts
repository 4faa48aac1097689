// The SSD store's writing connection, in its own thread (FINDINGS.md: one
// row per transaction and WAL checkpoints stall 17-33 ms; the FUSE thread must
// never wait for SQLite). Each batch of operations is one transaction,
// committed (synchronous=NORMAL, or FULL for a batch a commit() waits on), then acknowledged by its sequence number.

import Database from 'better-sqlite3'
import { parentPort, workerData } from 'worker_threads'

import { PUT_FIELDS, type Batch, type WriteOp } from './ssd-worker-types'

const db = new Database(workerData.path as string)
db.pragma('journal_mode = WAL')
db.pragma('synchronous = NORMAL')
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
const syncRow = db.prepare("INSERT INTO meta(key, value) VALUES ('sync', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
const cleanRecord = db.prepare('UPDATE images SET clean = ? WHERE id = ?')
const rename = db.prepare('UPDATE images SET path = ? WHERE id = ?')
const written = db.prepare('UPDATE images SET written = ? WHERE id = ?')
const setMeta = db.prepare('INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value')
const delMeta = db.prepare('DELETE FROM meta WHERE key = ?')
const buf = (u: Uint8Array) => Buffer.from(u.buffer, u.byteOffset, u.byteLength)

const apply = db.transaction((m: Batch) => {
  for (const o of m.ops) {
    if (typeof o === 'number') {
      const f = m.puts!.subarray(o * PUT_FIELDS, (o + 1) * PUT_FIELDS)
      put.run(f[0], f[1], f[2], f[3], buf(m.blob!.subarray(f[4], f[4] + f[5])))
    } else if (o.op === 'put') put.run(o.image, o.block, o.cls, o.dirty, buf(o.data))
    else if (o.op === 'clean') clean.run(o.image, o.block)
    else if (o.op === 'delete') del.run(o.image, o.block)
    else if (o.op === 'truncate') trunc.run(o.image, o.fromBlock)
    else if (o.op === 'image') image.run(o.id, o.path, o.dev, o.ino, o.size, buf(o.signature))
    else if (o.op === 'map') saveMap.run(o.data ? buf(o.data) : null, o.id)
    else if (o.op === 'signature') signature.run(buf(o.signature), o.id)
    else if (o.op === 'rename') rename.run(o.path, o.id)
    else if (o.op === 'sync') syncRow.run(String(Date.now()))
    else if (o.op === 'cleanRecord') cleanRecord.run(o.data ? buf(o.data) : null, o.id)
    else if (o.op === 'written') written.run(o.ms, o.id)
    else if (o.op === 'meta') {
      if (o.value === null) delMeta.run(o.key)
      else setMeta.run(o.key, o.value)
    }
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
    db.pragma(m.durable ? 'synchronous = FULL' : 'synchronous = NORMAL')
    if (m.durable && !m.ops.some((o) => typeof o === 'number' || o.op !== 'sync')) m.ops.push({ op: 'sync' })
    apply(m)
    parentPort!.postMessage({ seq: m.seq })
  } catch (e) {
    parentPort!.postMessage({ seq: m.seq, error: (e as Error).message })
  }
})
