// npm run bench:passthrough [-- --size MiB --runtime S --rounds N --json FILE]
//
// fio in one run against four targets: the store directly, the vmdi-fuse
// mount of it, a mount whose JS handlers do no I/O (scripts/nullfs.ts --js:
// the ceiling of the FUSE binding, the yardstick), and the same no-I/O
// mount on the binding's direct path bound to /dev/zero (the path our mount
// takes for pass-through files, at zero device cost: what is left between the
// mount and it is the store's own write and read cost). Every job uses
// O_DIRECT so each request crosses FUSE (the mount answers O_DIRECT opens with
// direct_io); on the store itself O_DIRECT reaches the disk, so "mount/store"
// is for the record. Prints a table of IOPS, MB/s and the ratios; the target
// is mount / JS no-I/O mount >= 0.8.
// The store file is in the page cache when the mount is measured (see below),
// and every run starts after a sync: the writeback of one job's dirty pages
// would otherwise slow the next job's buffered writes to the store (a rewrite of
// a page under writeback waits for it). Each job runs --rounds times (default 3),
// the four targets interleaved in each round; the table shows medians.
import { ChildProcess, execFileSync, spawn } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { PROJECT_ROOT } from '../src/root'

interface Job {
  name: string
  rw: string
  bs: string
  numjobs: number
}
const JOBS: Job[] = [
  { name: 'seq read 1M', rw: 'read', bs: '1M', numjobs: 1 },
  { name: 'seq write 1M', rw: 'write', bs: '1M', numjobs: 1 },
  { name: 'rand read 4K qd1', rw: 'randread', bs: '4k', numjobs: 1 },
  { name: 'rand write 4K qd1', rw: 'randwrite', bs: '4k', numjobs: 1 },
  { name: 'rand read 4K 8 jobs', rw: 'randread', bs: '4k', numjobs: 8 },
  { name: 'rand write 4K 8 jobs', rw: 'randwrite', bs: '4k', numjobs: 8 },
]

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(name)
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : dflt
}

function waitReady(p: ChildProcess, what: string, marker: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = ''
    const on = (d: Buffer) => {
      out += d
      if (out.includes(marker)) resolve()
    }
    p.stdout?.on('data', on)
    p.stderr?.on('data', on)
    p.on('exit', (c) => reject(new Error(`${what} exited ${c}: ${out}`)))
  })
}

function fio(file: string, job: Job, runtime: number, sizeMiB: number): { iops: number; mbps: number } {
  const out = execFileSync(
    'fio',
    [
      '--name=bench', `--filename=${file}`, `--rw=${job.rw}`, `--bs=${job.bs}`, `--numjobs=${job.numjobs}`,
      '--direct=1', '--ioengine=psync', '--time_based', `--runtime=${runtime}`, '--ramp_time=1',
      `--size=${sizeMiB}M`, '--group_reporting', '--output-format=json', '--randrepeat=0',
    ],
    { encoding: 'utf8', maxBuffer: 64 << 20 },
  )
  const j = JSON.parse(out.slice(out.indexOf('{'))).jobs[0]
  const side = job.rw.includes('read') ? j.read : j.write
  return { iops: side.iops, mbps: side.bw_bytes / 1e6 }
}

async function main(): Promise<void> {
  const sizeMiB = Number(arg('--size', '512'))
  const runtime = Number(arg('--runtime', '5'))
  const rounds = Math.max(1, Number(arg('--rounds', '3')))
  const jsonOut = arg('--json', '')
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-bench-'))
  const store = path.join(base, 'store')
  const mnt = path.join(base, 'mnt')
  const nmnt = path.join(base, 'null')
  const dmnt = path.join(base, 'null-direct')
  for (const d of [store, mnt, nmnt, dmnt]) fs.mkdirSync(d)
  const img = path.join(store, 'bench.img')
  process.stderr.write(`bench: writing a ${sizeMiB} MiB test file\n`)
  execFileSync('dd', ['if=/dev/urandom', `of=${img}`, 'bs=1M', `count=${sizeMiB}`, 'status=none'])
  const cli = path.join(PROJECT_ROOT, 'dist', 'src', 'cli.js')
  const vm = spawn(process.execPath, [cli, '-f', store, mnt], { stdio: ['ignore', 'pipe', 'pipe'] })
  // Two no-I/O mounts: JS handlers that do no I/O (the issue's "binding
  // ceiling"), and the binding's direct path bound to /dev/zero (the path the
  // mount really takes for pass-through files, at zero device cost).
  const nf = spawn(process.execPath, [path.join(PROJECT_ROOT, 'dist', 'scripts', 'nullfs.js'), nmnt, String(sizeMiB << 20), '--js'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const df = spawn(process.execPath, [path.join(PROJECT_ROOT, 'dist', 'scripts', 'nullfs.js'), dmnt, String(sizeMiB << 20)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  try {
    await Promise.all([waitReady(vm, 'vmdi-fuse', 'mounted '), waitReady(nf, 'nullfs', 'ready'), waitReady(df, 'nullfs', 'ready')])
    type R = { iops: number; mbps: number }
    const rows: Array<{ job: string; store: R; mount: R; ceiling: R; directCeiling: R }> = []
    const median = (xs: R[]): R => [...xs].sort((a, b) => a.iops - b.iops)[Math.floor(xs.length / 2)]
    for (const job of JOBS) {
      const runs: { store: R[]; mount: R[]; ceiling: R[]; directCeiling: R[] } = { store: [], mount: [], ceiling: [], directCeiling: [] }
      for (let round = 0; round < rounds; round++) {
        process.stderr.write(`bench: ${job.name}, round ${round + 1} of ${rounds}\n`)
        // Interleave the targets per round so machine noise hits them alike.
        execFileSync('sync')
        runs.ceiling.push(fio(path.join(nmnt, 'null.img'), job, runtime, sizeMiB))
        runs.directCeiling.push(fio(path.join(dmnt, 'null.img'), job, runtime, sizeMiB))
        // O_DIRECT writes on the store itself (the last target) drop its page
        // cache; the pass-through is measured against a cached store, as the
        // ceiling is: read the file back into the cache first.
        execFileSync('dd', [`if=${img}`, 'of=/dev/null', 'bs=4M', 'status=none'])
        execFileSync('sync')
        runs.mount.push(fio(path.join(mnt, 'bench.img'), job, runtime, sizeMiB))
        execFileSync('sync')
        runs.store.push(fio(img, job, runtime, sizeMiB))
      }
      rows.push({ job: job.name, store: median(runs.store), mount: median(runs.mount), ceiling: median(runs.ceiling), directCeiling: median(runs.directCeiling) })
    }
    const f = (n: number) => (n >= 100 ? n.toFixed(0) : n.toFixed(1))
    const lines = [
      `| job | store IOPS | mount IOPS | no-I/O mount, JS handlers | no-I/O mount, direct path | mount / no-I/O JS | mount / no-I/O direct | mount / store |`,
      `|---|---:|---:|---:|---:|---:|---:|---:|`,
      ...rows.map(
        (r) =>
          `| ${r.job} | ${f(r.store.iops)} (${f(r.store.mbps)} MB/s) | ${f(r.mount.iops)} (${f(r.mount.mbps)} MB/s) | ${f(r.ceiling.iops)} | ${f(r.directCeiling.iops)} | ${(r.mount.iops / r.ceiling.iops).toFixed(2)} | ${(r.mount.iops / r.directCeiling.iops).toFixed(2)} | ${(r.mount.iops / r.store.iops).toFixed(2)} |`,
      ),
    ]
    process.stdout.write(`\nfio, O_DIRECT, psync, ${runtime} s per job and target, median of ${rounds} rounds, ${sizeMiB} MiB file, ${os.cpus().length} CPUs\n\n${lines.join('\n')}\n\n`)
    const verdict = (key: 'ceiling' | 'directCeiling') => {
      const miss = rows.filter((r) => r.mount.iops / r[key].iops < 0.8).map((r) => r.job)
      return miss.length ? `NOT met on: ${miss.join(', ')}` : 'met'
    }
    process.stdout.write(`target (issue 2): mount / no-I/O mount with JS handlers >= 0.80 on every job: ${verdict('ceiling')}\n`)
    process.stdout.write(`for the record, mount / no-I/O mount on the same direct path >= 0.80: ${verdict('directCeiling')}\n`)
    if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify({ sizeMiB, runtime, rounds, rows }, null, 2))
  } finally {
    vm.kill('SIGTERM')
    nf.kill('SIGTERM')
    df.kill('SIGTERM')
    await new Promise((r) => setTimeout(r, 1000))
    for (const d of [mnt, nmnt, dmnt]) {
      try {
        execFileSync('fusermount', ['-u', '-z', d], { stdio: 'ignore' })
      } catch {
        /* already unmounted */
      }
    }
    fs.rmSync(base, { recursive: true, force: true })
  }
}

main().catch((e) => {
  console.error(`bench-passthrough: ${(e as Error).message}`)
  process.exit(1)
})
