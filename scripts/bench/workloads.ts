// The workloads of the paper's Figure 2, run in the guest (a loop-mounted ext
// file system inside an image on the mount). Each is timed by the harness
// from its start to its end, with a final `sync` for those that write. The
// node-side ones (create, webserver, boot) run as a child process
// (`bench.js --worker NAME ...`) so the harness itself stays responsive.

import fs from 'fs'
import path from 'path'
import { FsType } from './images'
import type { VmMemory } from './cgroup'
import { gamma, rng, run as runPlain, RunOptions, RunResult } from './util'

export type WorkloadBase = 'du' | 'stat' | 'find' | 'rm' | 'create' | 'webserver' | 'boot'

export const WORKLOAD_BASES: WorkloadBase[] = ['du', 'stat', 'find', 'rm', 'create', 'webserver', 'boot']

export interface Workload {
  base: WorkloadBase
  /** e.g. du-ext4, boot */
  name: string
  image: 'data-ext4' | 'data-ext3' | 'os'
  fs: FsType
  /** Writes to the image: runs on a copy, guest mounted read-write, ends with sync. */
  rw: boolean
  what: string
}

export interface WorkloadContext {
  /** The guest's root directory (the mounted file system). */
  root: string
  /** The harness's own script (for workers). */
  self: string
  /** Files to write lists into. */
  tmp: string
  createFiles: number
  webIterations: number
  www: string[]
  boot: string[]
  /** The VM's memory group (cgroup.ts): the workload's processes run in it; null: unbounded (the host's page cache). */
  memory?: VmMemory | null
}

export function workloads(fsList: FsType[]): Workload[] {
  const out: Workload[] = []
  const data: Exclude<WorkloadBase, 'boot'>[] = ['du', 'stat', 'find', 'rm', 'create', 'webserver']
  for (const base of data) {
    for (const f of fsList) {
      out.push({ base, name: `${base}-${f}`, image: `data-${f}`, fs: f, rw: base === 'rm' || base === 'create' || base === 'webserver', what: WHAT[base] })
    }
  }
  out.push({ base: 'boot', name: 'boot', image: 'os', fs: 'ext4', rw: false, what: WHAT.boot })
  return out
}

export const WHAT: Record<WorkloadBase, string> = {
  du: '`du -s` of the whole guest file system',
  stat: '`find -exec stat {} +` of every file and directory',
  find: '`find` of a name that does not exist',
  rm: '`rm -rf` of every file (fileserver tree and web files), then `sync`',
  create: 'creation of new files (16 KiB mean, Gamma(1.5); 100 per directory, as filebench createfiles), then `sync`',
  webserver: 'filebench-webserver-like loop: 10 × (open, read whole, close) of random web files, then a 16 KiB append to a log; then `sync`',
  boot: 'boot-like read of the boot list (kernel, initrd, init, programs, libraries, etc/), whole files, in order',
}

/** Runs one workload in the guest; resolves when it (and its sync) is done. */
export async function runWorkload(w: Workload, ctx: WorkloadContext, timeoutMs: number): Promise<RunResult> {
  // Every process of the workload (sync included: it writes back the guest's dirty pages) in the VM's memory group.
  const run = (cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> => {
    if (!ctx.memory) return runPlain(cmd, args, opts)
    const x = ctx.memory.wrap(cmd, args)
    return runPlain(x.cmd, x.args, opts)
  }
  const node = (args: string[]) => run(process.execPath, [ctx.self, '--worker', ...args], { timeoutMs })
  let r: RunResult
  switch (w.base) {
    case 'du':
      r = await run('du', ['-s', ctx.root], { timeoutMs })
      break
    case 'stat':
      r = await run('find', [ctx.root, '-exec', 'stat', '{}', '+'], { timeoutMs, discardStdout: true })
      break
    case 'find':
      r = await run('find', [ctx.root, '-name', 'no-such-file.vmdi-bench'], { timeoutMs })
      if (r.stdout.trim()) throw new Error(`find found ${r.stdout.trim()}`)
      break
    case 'rm': {
      const tops = fs.readdirSync(ctx.root).filter((n) => n !== 'lost+found')
      r = await run('rm', ['-rf', ...tops.map((n) => path.join(ctx.root, n))], { timeoutMs })
      await run('sync', [], { timeoutMs })
      break
    }
    case 'create':
      r = await node(['create', path.join(ctx.root, 'new'), String(ctx.createFiles)])
      await run('sync', [], { timeoutMs })
      break
    case 'webserver': {
      const list = path.join(ctx.tmp, 'www.list')
      fs.writeFileSync(list, ctx.www.join('\n'))
      r = await node(['webserver', ctx.root, list, String(ctx.webIterations)])
      await run('sync', [], { timeoutMs })
      break
    }
    case 'boot': {
      const list = path.join(ctx.tmp, 'boot.list')
      fs.writeFileSync(list, ctx.boot.join('\n'))
      r = await node(['boot', ctx.root, list])
      break
    }
  }
  return r
}

// --- workers (child processes) -----------------------------------------------------

function readWhole(p: string, buf: Buffer): number {
  const fd = fs.openSync(p, 'r')
  let total = 0
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null)
      if (n <= 0) break
      total += n
    }
  } finally {
    fs.closeSync(fd)
  }
  return total
}

/** `bench.js --worker NAME ARGS`: prints one JSON line of counts. */
export function worker(argv: string[]): void {
  const [name, ...a] = argv
  const buf = Buffer.alloc(1 << 20)
  if (name === 'create') {
    // filebench createfiles: meandirwidth 100, filesize cvar-gamma mean 16k gamma 1.5; write whole file, close.
    const [dir, nStr] = a
    const n = Number(nStr)
    const size = gamma(rng(0xc0ffee), 16 * 1024, 1.5)
    const data = Buffer.alloc(1 << 20, 0xa5)
    let bytes = 0
    for (let i = 0; i < n; i++) {
      const d = path.join(dir, `d${String(Math.floor(i / 100)).padStart(4, '0')}`)
      if (i % 100 === 0) fs.mkdirSync(d, { recursive: true })
      const len = Math.max(1, Math.min(data.length, Math.round(size())))
      const fd = fs.openSync(path.join(d, `n${String(i).padStart(6, '0')}`), 'w')
      fs.writeSync(fd, data, 0, len)
      fs.closeSync(fd)
      bytes += len
    }
    process.stdout.write(JSON.stringify({ files: n, bytes }) + '\n')
    return
  }
  if (name === 'webserver') {
    const [root, listFile, itStr] = a
    const files = fs.readFileSync(listFile, 'utf8').split('\n').filter(Boolean)
    const iterations = Number(itStr)
    const uni = rng(0x3eb)
    const log = Buffer.alloc(16 * 1024, 0x4c)
    let reads = 0
    let bytes = 0
    for (let i = 0; i < iterations; i++) {
      for (let k = 0; k < 10; k++) {
        bytes += readWhole(path.join(root, files[Math.floor(uni() * files.length)]), buf)
        reads++
      }
      const fd = fs.openSync(path.join(root, 'www.log'), 'a')
      fs.writeSync(fd, log)
      fs.closeSync(fd)
    }
    process.stdout.write(JSON.stringify({ reads, bytes, appends: iterations }) + '\n')
    return
  }
  if (name === 'boot') {
    const [root, listFile] = a
    const files = fs.readFileSync(listFile, 'utf8').split('\n').filter(Boolean)
    let bytes = 0
    for (const f of files) bytes += readWhole(path.join(root, f), buf)
    process.stdout.write(JSON.stringify({ files: files.length, bytes }) + '\n')
    return
  }
  throw new Error(`unknown worker ${name}`)
}
