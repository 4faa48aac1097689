// NFS in user space, for test/fuse/nfs.test.ts and `npm run bench:nfs`: rpcbind
// and NFS-Ganesha (FSAL_VFS) exporting a directory, libnfs's tools (nfs-ls,
// nfs-cat, nfs-cp) and our own client native/tools/nfs-pwrite.c (in-place
// writes, a handle held across a server restart) as clients. The kernel here
// has no NFS server or client; see FINDINGS.md for what Ganesha needs.
// Ports are Ganesha's defaults (2049, mount 20048) and rpcbind's 111: one rig at a time.
import { ChildProcess, execFileSync, spawn, spawnSync } from 'child_process'
import fs from 'fs'
import net from 'net'
import path from 'path'
import { PROJECT_ROOT } from '../src/root'

export const NFS_PWRITE_SOURCE = path.join(PROJECT_ROOT, 'native', 'tools', 'nfs-pwrite.c')

/** What is missing to run the rig (apt packages of scripts/setup.sh), or null. */
export function nfsToolsMissing(): string | null {
  const need: [string, string][] = [
    ['ganesha.nfsd', 'nfs-ganesha'],
    ['rpcbind', 'rpcbind'],
    ['nfs-cat', 'libnfs-utils'],
    ['gcc', 'build-essential'],
  ]
  const missing = need.filter(([bin]) => spawnSync('sh', ['-c', `command -v ${bin} || test -x /usr/sbin/${bin}`]).status !== 0).map(([, pkg]) => pkg)
  if (spawnSync('pkg-config', ['--exists', 'libnfs']).status !== 0) missing.push('libnfs-dev')
  return missing.length ? `missing: apt-get install ${missing.join(' ')}` : null
}

/** Builds nfs-pwrite into `dir` with gcc against libnfs-dev; returns the binary's path. */
export function buildNfsPwrite(dir: string): string {
  const out = path.join(dir, 'nfs-pwrite')
  const flags = execFileSync('pkg-config', ['--cflags', '--libs', 'libnfs'], { encoding: 'utf8' }).trim().split(/\s+/).filter(Boolean)
  execFileSync('gcc', ['-O2', '-Wall', '-Wextra', '-Werror', '-o', out, NFS_PWRITE_SOURCE, ...flags], { stdio: ['ignore', 'pipe', 'pipe'] })
  return out
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port })
    s.once('connect', () => (s.destroy(), resolve(true)))
    s.once('error', () => resolve(false))
  })
}

async function until(cond: () => Promise<boolean> | boolean, ms: number, what: string, dead?: () => string | null): Promise<void> {
  const end = Date.now() + ms
  for (;;) {
    const why = dead?.()
    if (why) throw new Error(why)
    if (await cond()) return
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

function exitOf(p: ChildProcess): Promise<void> {
  return new Promise((resolve) => (p.exitCode !== null || p.signalCode !== null ? resolve() : p.once('exit', () => resolve())))
}

/** rpcbind in the foreground (NFSv3 needs it), or the one already listening on port 111 (left alone). */
export async function startRpcbind(): Promise<{ stop(): Promise<void> }> {
  if (await listening(111)) return { async stop() {} }
  const p = spawn('rpcbind', ['-f'], { stdio: 'ignore' })
  await until(() => listening(111), 10_000, 'rpcbind on port 111', () => (p.exitCode !== null ? `rpcbind -f exited ${p.exitCode}` : null))
  return {
    async stop() {
      p.kill('SIGTERM')
      await exitOf(p)
    },
  }
}

export function nfsUrl(pseudo: string, file: string, version: 3 | 4): string {
  const rel = file.replace(/^\/+/, '')
  return `nfs://127.0.0.1${pseudo}${rel ? '/' + rel : ''}?version=${version}`
}

/**
 * NFS-Ganesha in the foreground with `conf` (`ganesha.nfsd -F -f CONF -L LOG -p PIDFILE`), its log and
 * pid file in `dir`. start() returns once `pseudo` answers an NFSv3 listing.
 */
export class Ganesha {
  readonly log: string
  private proc: ChildProcess | null = null

  constructor(readonly conf: string, readonly dir: string, readonly pseudo: string) {
    this.log = path.join(dir, 'ganesha.log')
  }

  logTail(lines = 15): string {
    try {
      return fs.readFileSync(this.log, 'utf8').trim().split('\n').slice(-lines).join('\n')
    } catch {
      return '(no log)'
    }
  }

  async start(ms = 30_000): Promise<void> {
    // Else the readiness check below could be answered by the server already there.
    if (await listening(2049)) throw new Error('port 2049 is in use (another NFS server is running): stop it first')
    const p = spawn('ganesha.nfsd', ['-F', '-f', this.conf, '-L', this.log, '-p', path.join(this.dir, 'ganesha.pid')], { stdio: 'ignore' })
    this.proc = p
    await until(
      () => spawnSync('nfs-ls', [nfsUrl(this.pseudo, '', 3)], { stdio: 'ignore', timeout: 10_000 }).status === 0,
      ms,
      `NFS-Ganesha to serve ${this.pseudo} (log ${this.log}:\n${this.logTail()})`,
      () => (p.exitCode !== null || p.signalCode !== null ? `ganesha.nfsd exited (${p.exitCode ?? p.signalCode}) before serving; ${this.log}:\n${this.logTail()}` : null),
    )
  }

  /** SIGTERM and wait for the exit (SIGKILL after `ms`). */
  async stop(ms = 30_000): Promise<void> {
    const p = this.proc
    if (!p) return
    this.proc = null
    if (p.exitCode !== null || p.signalCode !== null) return
    p.kill('SIGTERM')
    const t = setTimeout(() => p.kill('SIGKILL'), ms)
    await exitOf(p)
    clearTimeout(t)
  }

  async restart(): Promise<void> {
    await this.stop()
    await this.start()
  }
}

/** The names nfs-ls lists at `url` (after mode, links, uid, gid, size). */
export function nfsLs(url: string): string[] {
  const out = execFileSync('nfs-ls', [url], { encoding: 'utf8', timeout: 60_000 })
  return out
    .split('\n')
    .filter(Boolean)
    .map((l) => l.trim().split(/\s+/).slice(5).join(' '))
}

export function nfsCat(url: string): Buffer {
  return execFileSync('nfs-cat', [url], { maxBuffer: 1 << 30, timeout: 300_000 })
}

/** nfs-cp of a local file to a new file at `url` (nfs-cp refuses to overwrite). */
export function nfsCp(local: string, url: string): void {
  execFileSync('nfs-cp', [local, url], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 })
}

/** Our client: `data` written at `offset` of the existing file at `url`, then committed. */
export function nfsPwrite(bin: string, url: string, offset: number, data: Buffer): void {
  const r = spawnSync(bin, [url, String(offset)], { input: data, encoding: 'buffer', timeout: 300_000 })
  if (r.status !== 0) throw new Error(`nfs-pwrite ${url} ${offset} exited ${r.status ?? r.signal}: ${String(r.stderr)}`)
}

/** Runs of differing 4 KiB blocks between two equal-size files: [byte offset, length]. */
export function changedRuns(a: Buffer, b: Buffer, block = 4096): [number, number][] {
  if (a.length !== b.length) throw new Error(`expected files of equal size, saw ${a.length} and ${b.length}`)
  const runs: [number, number][] = []
  for (let off = 0; off < a.length; off += block) {
    const end = Math.min(off + block, a.length)
    if (a.subarray(off, end).equals(b.subarray(off, end))) continue
    const last = runs[runs.length - 1]
    if (last && last[0] + last[1] === off) last[1] += end - off
    else runs.push([off, end - off])
  }
  return runs
}

/** nfs-pwrite --hold: one open NFS file handle, read through on request. */
export class HeldHandle {
  private proc: ChildProcess
  private buf = ''
  private waiters: ((line: string) => void)[] = []
  private lines: string[] = []

  constructor(bin: string, url: string) {
    this.proc = spawn(bin, ['--hold', url], { stdio: ['pipe', 'pipe', 'pipe'] })
    let err = ''
    this.proc.stderr!.on('data', (d) => (err += d))
    this.proc.stdout!.on('data', (d) => {
      this.buf += d
      for (let i = this.buf.indexOf('\n'); i >= 0; i = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, i)
        this.buf = this.buf.slice(i + 1)
        const w = this.waiters.shift()
        if (w) w(line)
        else this.lines.push(line)
      }
    })
    this.proc.on('exit', (code) => {
      for (const w of this.waiters.splice(0)) w(`exited ${code}: ${err.trim()}`)
    })
  }

  private next(ms = 120_000): Promise<string> {
    const l = this.lines.shift()
    if (l !== undefined) return Promise.resolve(l)
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`nfs-pwrite --hold: no answer in ${ms} ms`)), ms)
      this.waiters.push((line) => (clearTimeout(t), resolve(line)))
    })
  }

  async opened(): Promise<void> {
    const l = await this.next()
    if (l !== 'open') throw new Error(`nfs-pwrite --hold: expected "open", saw ${l}`)
  }

  /** The bytes read through the held handle, or an Error carrying the client's message (a stale handle). */
  async read(offset: number, count: number): Promise<Buffer | Error> {
    this.proc.stdin!.write(`${offset} ${count}\n`)
    const l = await this.next()
    const m = /^ok (\d+) ([0-9a-f]*)$/.exec(l)
    return m ? Buffer.from(m[2], 'hex') : new Error(l)
  }

  async close(): Promise<void> {
    this.proc.stdin!.end()
    await exitOf(this.proc)
  }
}
