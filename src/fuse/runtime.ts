// Where a running daemon can be found: /run/vmdi-fuse/<id>.json (pid, store,
// log, socket) and the control socket /run/vmdi-fuse/<id>.sock, where <id>
// is derived from the mount point's real path. The socket speaks one JSON
// request per line ({"cmd": "status"}) and answers one JSON line.
import crypto from 'crypto'
import fs from 'fs'
import net from 'net'
import path from 'path'

export const RUNTIME_DIR = process.env.VMDI_RUNTIME_DIR || '/run/vmdi-fuse'

export interface RuntimeRecord {
  pid: number
  store: string
  mountpoint: string
  socket: string
  log: string | null
  started: string
  version: string
}

export function runtimeId(mountpoint: string): string {
  return crypto.createHash('sha256').update(mountpoint).digest('hex').slice(0, 16)
}

export function runtimePaths(mountpoint: string): { record: string; socket: string } {
  const id = runtimeId(mountpoint)
  return { record: path.join(RUNTIME_DIR, `${id}.json`), socket: path.join(RUNTIME_DIR, `${id}.sock`) }
}

export function writeRecord(rec: RuntimeRecord): void {
  fs.mkdirSync(RUNTIME_DIR, { recursive: true, mode: 0o755 })
  const { record } = runtimePaths(rec.mountpoint)
  fs.writeFileSync(record + '.tmp', JSON.stringify(rec, null, 2) + '\n', { mode: 0o644 })
  fs.renameSync(record + '.tmp', record)
}

export function readRecord(mountpoint: string): RuntimeRecord | null {
  try {
    return JSON.parse(fs.readFileSync(runtimePaths(mountpoint).record, 'utf8')) as RuntimeRecord
  } catch {
    return null
  }
}

export function removeRecord(mountpoint: string): void {
  const p = runtimePaths(mountpoint)
  for (const f of [p.record, p.socket]) fs.rmSync(f, { force: true })
}

/** Whether pid runs (a zombie, exited but not yet reaped by its parent, does not). */
export function pidAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state !== 'Z' && state !== 'X'
  } catch {
    return false
  }
}

export type Handler = (req: Record<string, unknown>) => Promise<unknown> | unknown

/** The daemon's side: serves requests until closed. Only root may connect (mode 0600). */
export async function serveControl(socketPath: string, handler: Handler): Promise<net.Server> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 })
  fs.rmSync(socketPath, { force: true })
  const server = net.createServer((conn) => {
    let buf = ''
    conn.setEncoding('utf8')
    conn.on('data', async (chunk: string) => {
      buf += chunk
      if (buf.length > 65536) return conn.destroy()
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        let reply: unknown
        try {
          reply = { ok: true, result: await handler(JSON.parse(line)) }
        } catch (e) {
          reply = { ok: false, error: (e as Error).message }
        }
        conn.write(JSON.stringify(reply) + '\n')
      }
    })
    conn.on('error', () => conn.destroy())
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(socketPath, () => {
      server.off('error', reject)
      resolve()
    })
  })
  fs.chmodSync(socketPath, 0o600)
  server.on('error', () => undefined)
  server.unref()
  return server
}

/** The CLI's side: one request, one answer. */
export function requestControl(socketPath: string, req: Record<string, unknown>, timeoutMs = 10_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const conn = net.createConnection(socketPath)
    let buf = ''
    const timer = setTimeout(() => {
      conn.destroy()
      reject(new Error(`no answer from ${socketPath} within ${timeoutMs} ms`))
    }, timeoutMs)
    conn.setEncoding('utf8')
    conn.on('connect', () => conn.write(JSON.stringify(req) + '\n'))
    conn.on('data', (d: string) => {
      buf += d
      const nl = buf.indexOf('\n')
      if (nl < 0) return
      clearTimeout(timer)
      conn.end()
      try {
        const r = JSON.parse(buf.slice(0, nl)) as { ok: boolean; result?: unknown; error?: string }
        if (r.ok) resolve(r.result)
        else reject(new Error(r.error))
      } catch (e) {
        reject(e)
      }
    })
    conn.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    // The daemon died (or closed us) before answering: the kernel closed its end. Without
    // this the request would wait forever (a settled promise ignores the later reject).
    conn.on('close', () => {
      clearTimeout(timer)
      reject(new Error(`the connection to ${socketPath} closed without an answer`))
    })
  })
}
