// npm run bench:datapath [-- --part meta|data|all --runtime S --rounds N --jobs RW-BS-QDn,… --json FILE]
//
// Part "data" (issue 17): fio on an introspected image's data blocks against the
// same image through a --no-introspect mount, one image and 8 at once (see
// scripts/bench/data-path.ts). Part "meta", issue 5's two datapath numbers,
// measured in one run through real mounts of two copies of one store (one daemon
// per store):
//   1. a RAM hit on a 4 KiB meta-data block (an inode-table block of a guest
//      ext4, after the scan preloaded it) against a --no-introspect read of the
//      same block served from the page cache (the pass-through's direct path);
//      target: RAM hit <= 1.1x the pass-through's cost per read;
//   2. redirected meta-data writes: 4 KiB O_DIRECT writes into the journal (fio)
//      and into the inode tables as a guest writes them (one inode's mtime
//      changed, a synchronous loop), each one also feeding the live map; and,
//      for the record, inode-table blocks overwritten with random bytes (every
//      inode in the block changes into garbage that is re-walked); target >= 5,000/s.
// fio, psync, queue depth 1, O_DIRECT (every request crosses FUSE). The two
// read targets run alternately, three rounds each; the table shows medians.
import { ChildProcess, execFileSync, spawn } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import type { ImageStats, StatsAnswer } from '../src/control/protocol'
import { PROJECT_ROOT } from '../src/root'
import { dataTable, makeDataImage, measureJobs, type DataRow, type Region } from './bench/data-path'

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(name)
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : dflt
}

const CLI = path.join(PROJECT_ROOT, 'dist', 'src', 'cli.js')

function mount(store: string, mnt: string, args: string[], env: NodeJS.ProcessEnv): Promise<ChildProcess> {
  fs.mkdirSync(mnt, { recursive: true })
  const p = spawn(process.execPath, [CLI, '-f', ...args, store, mnt], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  return new Promise((resolve, reject) => {
    let out = ''
    const on = (d: Buffer) => {
      out += d
      if (out.includes('mounted ')) resolve(p)
    }
    p.stdout!.on('data', on)
    p.stderr!.on('data', on)
    p.on('exit', (c) => reject(new Error(`vmdi-fuse exited ${c}: ${out}`)))
  })
}

function stats(mnt: string): StatsAnswer {
  return JSON.parse(execFileSync(process.execPath, [CLI, 'stats', mnt, '--json'], { encoding: 'utf8' })) as StatsAnswer
}

function fio(file: string, rw: string, offset: number, size: number, runtime: number): { iops: number; latUs: number } {
  const out = execFileSync(
    'fio',
    [
      '--name=bench', `--filename=${file}`, `--rw=${rw}`, '--bs=4k', '--numjobs=1', '--direct=1', '--ioengine=psync',
      '--time_based', `--runtime=${runtime}`, '--ramp_time=1', `--offset=${offset}`, `--size=${size}`,
      '--output-format=json', '--randrepeat=0', '--norandommap', '--allow_file_create=0',
    ],
    { encoding: 'utf8', maxBuffer: 64 << 20 },
  )
  const j = JSON.parse(out.slice(out.indexOf('{'))).jobs[0]
  const side = rw.includes('read') ? j.read : j.write
  return { iops: side.iops, latUs: side.clat_ns.mean / 1000 }
}

/** QD1 O_DIRECT rewrites of inode-table blocks as a guest writes them: the block's current bytes with one inode's times changed. */
function inodeTouches(file: string, first: number, last: number, seconds: number): { iops: number; latUs: number } {
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT)
  try {
    const blocks = Math.min(last - first + 1, 256)
    const cur = Buffer.alloc(blocks * 4096)
    fs.readSync(fd, cur, 0, cur.length, first * 4096)
    let n = 0
    const t0 = process.hrtime.bigint()
    const end = t0 + BigInt(Math.round(seconds * 1e9))
    while (process.hrtime.bigint() < end) {
      const k = n % blocks
      const blk = cur.subarray(k * 4096, (k + 1) * 4096)
      const ino = (n >> 8) % 16 // 256-byte inodes: 16 per block
      blk.writeUInt32LE((Date.now() / 1000) >>> 0, ino * 256 + 0x10) // i_mtime
      fs.writeSync(fd, blk, 0, 4096, (first + k) * 4096)
      n++
    }
    const ns = Number(process.hrtime.bigint() - t0)
    return { iops: n / (ns / 1e9), latUs: ns / n / 1000 }
  } finally {
    fs.closeSync(fd)
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

/** Part "data": the native data path against the pass-through, 1 image and 8. */
async function dataPart(runtime: number, rounds: number, only: string[]): Promise<{ text: string; rows: DataRow[] }> {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-bench-data-'))
  const storeI = path.join(base, 'store-i')
  const storeP = path.join(base, 'store-p')
  fs.mkdirSync(storeI)
  fs.mkdirSync(storeP)
  const log = (l: string) => process.stderr.write(l + '\n')
  log('bench:datapath (data): making the images (a 2 GiB ext4 with a 1.6 GiB file; 8 of 512 MiB with a 400 MiB file)')
  const big = makeDataImage(base, path.join(storeI, 'd0.img'), 2048, 1600)
  const small = makeDataImage(base, path.join(storeI, 'd1.img'), 512, 400)
  for (let i = 2; i <= 8; i++) fs.copyFileSync(path.join(storeI, 'd1.img'), path.join(storeI, `d${i}.img`))
  for (let i = 0; i <= 8; i++) fs.copyFileSync(path.join(storeI, `d${i}.img`), path.join(storeP, `d${i}.img`))
  const env = { VMDI_STATE_DIR: path.join(base, 'state') }
  const mntI = path.join(base, 'introspect')
  const mntP = path.join(base, 'passthrough')
  const procs: ChildProcess[] = []
  try {
    procs.push(await mount(storeI, mntI, [], env))
    procs.push(await mount(storeP, mntP, ['--no-introspect'], env))
    for (let i = 0; i <= 8; i++) fs.closeSync(fs.openSync(path.join(mntI, `d${i}.img`), 'r')) // attach, scan
    const t0 = Date.now()
    while (stats(mntI).images.filter((i: ImageStats) => i.nativeTableBytes !== null).length < 9) {
      if (Date.now() - t0 > 300_000) throw new Error('the images were not scanned in 300 s')
      await new Promise((r) => setTimeout(r, 200))
    }
    const region = (mnt: string, i: number): Region => ({ file: path.join(mnt, `d${i}.img`), ...(i === 0 ? big : small) })
    const rows = [
      ...measureJobs(1, [region(mntI, 0)], [region(mntP, 0)], runtime, rounds, log, only),
      ...measureJobs(8, [1, 2, 3, 4, 5, 6, 7, 8].map((i) => region(mntI, i)), [1, 2, 3, 4, 5, 6, 7, 8].map((i) => region(mntP, i)), runtime, rounds, log, only),
    ]
    const st = stats(mntI).images
    const native = st.reduce((a: number, i: ImageStats) => a + i.nativeReads + i.nativeWrites, 0)
    const ops = (JSON.parse(execFileSync(process.execPath, [CLI, 'status', mntI, '--json'], { encoding: 'utf8' })) as { ops: Record<string, number> }).ops
    const viaJs = (ops.read ?? 0) + (ops.write ?? 0)
    const text = [
      `| fio, libaio, O_DIRECT, ${runtime} s a run, median of ${rounds} alternating rounds |`,
      '',
      dataTable(rows),
      '',
      `reads and writes the binding served natively on the introspected mount: ${native.toLocaleString('en')}; reads and writes that reached JavaScript: ${viaJs.toLocaleString('en')}`,
    ].join('\n')
    return { text, rows }
  } finally {
    for (const m of [mntP, mntI]) spawnSyncQuiet('fusermount', ['-u', m])
    await Promise.all(procs.map((p) => new Promise((r) => (p.exitCode !== null ? r(null) : p.on('exit', r)))))
    fs.rmSync(base, { recursive: true, force: true })
  }
}

async function main(): Promise<void> {
  const runtime = Number(arg('--runtime', '4'))
  const rounds = Number(arg('--rounds', '3'))
  const part = arg('--part', 'all')
  const jsonOut = arg('--json', '')
  let data: { text: string; rows: DataRow[] } | null = null
  if (part === 'data' || part === 'all') {
    // --jobs randread-4k-qd16,write-1m-qd4,…: only those (default: all five)
    data = await dataPart(runtime, rounds, arg('--jobs', '').split(',').filter(Boolean))
    process.stdout.write(data.text + '\n\n')
    if (jsonOut && part === 'data') fs.writeFileSync(jsonOut, JSON.stringify({ data: data.rows }, null, 2) + '\n')
  }
  if (part === 'data') return
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-bench-dp-'))
  const store = path.join(base, 'store')
  fs.mkdirSync(store)
  const img = path.join(store, 'guest.img')
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-N', '65536', img, '512M'])
  const dump = execFileSync('dumpe2fs', [img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
  const it = /Inode table at (\d+)-(\d+)/.exec(dump)!
  const itFirst = Number(it[1])
  const itLast = Number(it[2])
  const jInode = Number(/Journal inode:\s+(\d+)/.exec(dump)?.[1] ?? 8)
  const jExt = /\(0-\d+\):(\d+)-(\d+)/.exec(execFileSync('debugfs', ['-R', `stat <${jInode}>`, img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }))!
  const jFirst = Number(jExt[1])
  const jLast = Number(jExt[2])
  const env = { VMDI_STATE_DIR: path.join(base, 'state') }
  const procs: ChildProcess[] = []
  const mntI = path.join(base, 'introspect')
  const mntP = path.join(base, 'passthrough')
  try {
    procs.push(await mount(store, mntI, [], env))
    const fileI = path.join(mntI, 'guest.img')
    fs.closeSync(fs.openSync(fileI, 'r')) // attach, scan, preload
    const t0 = Date.now()
    while (!stats(mntI).images.some((i: ImageStats) => i.scan.state === 'done' && i.preloaded > 0)) {
      if (Date.now() - t0 > 60_000) throw new Error('the scan did not finish in 60 s')
      await new Promise((r) => setTimeout(r, 100))
    }
    // One daemon per store: the pass-through serves a copy.
    const storeP = path.join(base, 'store-p')
    fs.mkdirSync(storeP)
    fs.copyFileSync(img, path.join(storeP, 'guest.img'))
    procs.push(await mount(storeP, mntP, ['--no-introspect'], env))
    const fileP = path.join(mntP, 'guest.img')
    const block = itFirst * 4096
    const hit: number[] = []
    const pass: number[] = []
    const itable = () => stats(mntI).images[0].classes['inode-table'] ?? { reads: 0, ramHits: 0 }
    const r0 = itable()
    for (let round = 0; round < 3; round++) {
      hit.push(fio(fileI, 'read', block, 4096, runtime).latUs)
      pass.push(fio(fileP, 'read', block, 4096, runtime).latUs)
    }
    const r1 = itable()
    // Every read of the introspected mount must have been a RAM hit, or the row measures something else.
    const reads = r1.reads - r0.reads
    const ramHits = r1.ramHits - r0.ramHits
    const wJournal = fio(fileI, 'randwrite', jFirst * 4096, (jLast - jFirst + 1) * 4096, runtime)
    const wItable = inodeTouches(fileI, itFirst, itLast, runtime)
    const wGarbage = fio(fileI, 'randwrite', itFirst * 4096, (itLast - itFirst + 1) * 4096, runtime)
    const after = stats(mntI).images[0]
    const redirected = Object.values(after.classes as Record<string, { redirected: number }>).reduce((a, c) => a + c.redirected, 0)
    const rows = [
      ['RAM hit, inode-table block (introspect)', median(hit), 1e6 / median(hit)],
      ['same block, --no-introspect (page cache, direct path)', median(pass), 1e6 / median(pass)],
    ]
    const ratio = median(hit) / median(pass)
    const lines = [
      `| read of one 4 KiB meta-data block, QD1 O_DIRECT | mean latency µs (median of 3) | reads/s |`,
      `|---|---:|---:|`,
      ...rows.map(([n, l, r]) => `| ${n} | ${(l as number).toFixed(1)} | ${Math.round(r as number)} |`),
      '',
      `RAM hit / pass-through: ${ratio.toFixed(2)}x (target <= 1.1x: ${ratio <= 1.1 ? 'met' : 'MISSED'}); the introspected mount's reads of that block: ${reads}, RAM hits ${ramHits}${reads === ramHits ? '' : ' (NOT all RAM hits: the first row is not a pure RAM-hit cost)'}`,
      '',
      `| redirected 4 KiB writes, QD1 O_DIRECT | writes/s | mean latency µs |`,
      `|---|---:|---:|`,
      `| journal blocks | ${Math.round(wJournal.iops)} | ${wJournal.latUs.toFixed(1)} |`,
      `| inode-table blocks, one inode's mtime changed per write (diffed by the live map) | ${Math.round(wItable.iops)} | ${wItable.latUs.toFixed(1)} |`,
      `| inode-table blocks overwritten with random bytes (fio; 16 garbage inodes re-walked per write) | ${Math.round(wGarbage.iops)} | ${wGarbage.latUs.toFixed(1)} |`,
      '',
      `target >= 5,000/s: journal ${wJournal.iops >= 5000 ? 'met' : 'MISSED'}, inode tables ${wItable.iops >= 5000 ? 'met' : 'MISSED'} (random bytes: ${wGarbage.iops >= 5000 ? 'met' : 'missed'}); redirected writes in stats: ${redirected}`,
    ]
    process.stdout.write(lines.join('\n') + '\n')
    if (jsonOut) {
      fs.writeFileSync(jsonOut, JSON.stringify({ data: data?.rows ?? null, ramHitUs: hit, passthroughUs: pass, ratio, journalWritesPerSec: wJournal.iops, inodeTableWritesPerSec: wItable.iops, inodeTableGarbageWritesPerSec: wGarbage.iops }, null, 2) + '\n')
    }
  } finally {
    for (const m of [mntP, mntI]) spawnSyncQuiet('fusermount', ['-u', m])
    await Promise.all(procs.map((p) => new Promise((r) => (p.exitCode !== null ? r(null) : p.on('exit', r)))))
    fs.rmSync(base, { recursive: true, force: true })
  }
}

function spawnSyncQuiet(cmd: string, args: string[]): void {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' })
  } catch {
    /* already gone */
  }
}

void main().catch((e) => {
  process.stderr.write(`bench:datapath: ${(e as Error).message}\n`)
  process.exit(1)
})
