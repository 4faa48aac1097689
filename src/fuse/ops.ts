// The fuse-native operation table: one thin handler per op, all registered
// here, each ending in exactly one reply. The errno boundary (toErrno) and the
// in-flight accounting live in `run`. Buffers the kernel lends us (read,
// write, setxattr) are valid until the reply: nothing keeps them after it.

import type Fuse from 'fuse-native'
import { E, toErrno } from './errno'
import { StoreFs, Caller, TimeSpec } from './passthrough'
import { log } from '../log'

export interface InFlight {
  op: string
  path: string
  started: number
  /** performance.now() at the start (latency). */
  t0: number
}

/** Upper bounds (seconds) of the FUSE op latency histogram's buckets (`--metrics`); the last bucket is +Inf. */
export const LATENCY_BOUNDS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 10]

/** One op's latencies: per-bucket counts (not cumulative; one more than LATENCY_BOUNDS) and their sum. */
export interface Latency {
  buckets: number[]
  sumSec: number
}

/** Counts and watches operations in flight (clean shutdown, slow-op log). */
export class OpTracker {
  private nextId = 1
  readonly inFlight = new Map<number, InFlight>()
  readonly counts: Record<string, number> = {}
  readonly errors: Record<string, number> = {}
  /** Latencies of the ops answered in JavaScript, by op (the binding's direct and RAM paths are counted apart). */
  readonly latency: Record<string, Latency> = {}
  private idleWaiters: Array<() => void> = []

  begin(op: string, path: string): number {
    const id = this.nextId++
    this.inFlight.set(id, { op, path, started: Date.now(), t0: performance.now() })
    this.counts[op] = (this.counts[op] ?? 0) + 1
    return id
  }

  end(id: number, op: string, rc: number): void {
    const o = this.inFlight.get(id)
    if (o) {
      const sec = (performance.now() - o.t0) / 1000
      const l = (this.latency[op] ??= { buckets: new Array<number>(LATENCY_BOUNDS.length + 1).fill(0), sumSec: 0 })
      let i = 0
      while (i < LATENCY_BOUNDS.length && sec > LATENCY_BOUNDS[i]) i++
      l.buckets[i]++
      l.sumSec += sec
    }
    this.inFlight.delete(id)
    if (rc < 0) this.errors[op] = (this.errors[op] ?? 0) + 1
    if (this.inFlight.size === 0 && this.idleWaiters.length) {
      const w = this.idleWaiters
      this.idleWaiters = []
      for (const f of w) f()
    }
  }

  idle(): Promise<void> {
    if (this.inFlight.size === 0) return Promise.resolve()
    return new Promise((res) => this.idleWaiters.push(res))
  }

  /** Ops running longer than `ms`, oldest first. */
  slow(ms: number): InFlight[] {
    const now = Date.now()
    return [...this.inFlight.values()].filter((o) => now - o.started >= ms).sort((a, b) => a.started - b.started)
  }
}

type Reply = (...args: any[]) => void

export function buildOps(store: StoreFs, tracker: OpTracker, fuseRef: () => Fuse | null): Record<string, Reply> {
  /** Runs one op: result → reply(0, ...value) or reply(-errno). */
  function run<T>(op: string, path: string, reply: Reply, work: () => Promise<T> | T, answer: (v: T) => unknown[]): void {
    const id = tracker.begin(op, path)
    let p: Promise<T> | T
    try {
      p = work()
    } catch (e) {
      p = Promise.reject(e)
    }
    if (!(p instanceof Promise)) {
      // Answered without waiting (a page-cache hit): no promise round trip.
      tracker.end(id, op, 0)
      reply(...answer(p))
      return
    }
    p.then(
      (v) => {
        tracker.end(id, op, 0)
        reply(...answer(v))
      },
      (e) => {
        const rc = toErrno(e)
        tracker.end(id, op, rc)
        if (rc === E.EIO && !(e && typeof e === 'object' && 'errno' in e)) log.error(`${op} ${path}: ${(e as Error)?.stack ?? e}`)
        reply(rc)
      },
    )
  }
  const none = (): unknown[] => [0]
  const caller = (): Caller | null => fuseRef()?.getContext() ?? null

  return {
    init: (cb: Reply) => cb(0),
    access: (p: string, mode: number, cb: Reply) => run('access', p, cb, () => store.access(p, mode), none),
    statfs: (p: string, cb: Reply) => run('statfs', p, cb, () => store.statfs(p), (s) => [0, s]),
    getattr: (p: string, cb: Reply) => run('getattr', p, cb, () => store.getattr(p), (st) => [0, st]),
    fgetattr: (p: string, fh: number, cb: Reply) => run('fgetattr', p, cb, () => store.fgetattr(p, fh), (st) => [0, st]),
    flush: (p: string, fh: number, cb: Reply) => run('flush', p, cb, () => store.flush(fh), none),
    fsync: (p: string, datasync: number, fh: number, cb: Reply) => run('fsync', p, cb, () => store.fsync(fh, datasync), none),
    fsyncdir: (p: string, datasync: number, _fh: number, cb: Reply) => run('fsyncdir', p, cb, () => store.fsyncdir(p, datasync), none),
    readdir: (p: string, cb: Reply) => run('readdir', p, cb, () => store.readdir(p), (r) => [0, r.names, r.stats]),
    truncate: (p: string, size: number, cb: Reply) => run('truncate', p, cb, () => store.truncate(p, size), none),
    ftruncate: (p: string, fh: number, size: number, cb: Reply) => run('ftruncate', p, cb, () => store.ftruncate(p, fh, size), none),
    utimens: (p: string, atime: TimeSpec, mtime: TimeSpec, cb: Reply) => run('utimens', p, cb, () => store.utimens(p, atime, mtime), none),
    readlink: (p: string, cb: Reply) => run('readlink', p, cb, () => store.readlink(p), (t) => [0, t]),
    chown: (p: string, uid: number, gid: number, cb: Reply) => run('chown', p, cb, () => store.chown(p, uid, gid), none),
    chmod: (p: string, mode: number, cb: Reply) => run('chmod', p, cb, () => store.chmod(p, mode), none),
    mknod: (p: string, mode: number, dev: number, cb: Reply) => {
      const c = caller()
      run('mknod', p, cb, () => store.mknod(p, mode, dev, c), none)
    },
    setxattr: (p: string, name: string, value: Buffer, _pos: number, flags: number, cb: Reply) =>
      run('setxattr', p, cb, () => store.setxattr(p, name, value, flags), none),
    getxattr: (p: string, name: string, _pos: number, cb: Reply) => run('getxattr', p, cb, () => store.getxattr(p, name), (v) => [0, v]),
    listxattr: (p: string, cb: Reply) => run('listxattr', p, cb, () => store.listxattr(p), (l) => [0, l]),
    removexattr: (p: string, name: string, cb: Reply) => run('removexattr', p, cb, () => store.removexattr(p, name), none),
    open: (p: string, flags: number, cb: Reply) => run('open', p, cb, () => store.open(p, flags), (r) => [0, r.fh, r.openFlags]),
    create: (p: string, mode: number, flags: number, cb: Reply) => {
      const c = caller()
      run('create', p, cb, () => store.create(p, mode, flags, c), (r) => [0, r.fh, r.openFlags])
    },
    read: (p: string, fh: number, buf: Buffer, len: number, pos: number, cb: Reply) =>
      run('read', p, cb, () => store.read(fh, buf, len, pos), (n) => [n]),
    write: (p: string, fh: number, buf: Buffer, len: number, pos: number, cb: Reply) =>
      run('write', p, cb, () => store.write(fh, buf, len, pos), (n) => [n]),
    release: (p: string, fh: number, cb: Reply) => run('release', p, cb, () => store.release(fh), none),
    unlink: (p: string, cb: Reply) => run('unlink', p, cb, () => store.unlink(p), none),
    rename: (src: string, dest: string, cb: Reply) => run('rename', src, cb, () => store.rename(src, dest), none),
    link: (src: string, dest: string, cb: Reply) => run('link', dest, cb, () => store.link(src, dest), none),
    symlink: (target: string, p: string, cb: Reply) => {
      const c = caller()
      run('symlink', p, cb, () => store.symlink(target, p, c), none)
    },
    mkdir: (p: string, mode: number, cb: Reply) => {
      const c = caller()
      run('mkdir', p, cb, () => store.mkdir(p, mode, c), none)
    },
    rmdir: (p: string, cb: Reply) => run('rmdir', p, cb, () => store.rmdir(p), none),
  }
}
