// The native data path's benchmark (issue 17), part of `npm run bench:datapath`:
// fio against an introspected image's data blocks and against the same image
// through a --no-introspect mount (the pass-through's direct path), one image,
// then 8 images driven at once (aggregate). Each store is its own copy (one
// daemon per store); the two mounts run side by side, jobs alternate between
// them round by round, and the table shows medians. Random jobs are confined to
// the data blocks of one big file inside each image (a run of it the allocator
// laid out contiguously), as a guest's database or VM disk file would be.
import { execFileSync } from 'child_process'
import fs from 'fs'
import path from 'path'

export interface DataJob {
  name: string
  rw: 'randread' | 'randwrite' | 'read' | 'write'
  bs: string
  iodepth: number
}

export const DATA_JOBS: DataJob[] = [
  { name: '4 KiB random read, QD16', rw: 'randread', bs: '4k', iodepth: 16 },
  { name: '4 KiB random write, QD16', rw: 'randwrite', bs: '4k', iodepth: 16 },
  { name: '1 MiB sequential read, QD4', rw: 'read', bs: '1m', iodepth: 4 },
  { name: '1 MiB sequential write, QD4', rw: 'write', bs: '1m', iodepth: 4 },
  { name: '4 KiB random read, QD1', rw: 'randread', bs: '4k', iodepth: 1 },
]

export interface Region {
  file: string
  offset: number
  size: number
}

/** One fio run over `regions` (one job each, run together): IOPS and MB/s summed. */
export function fioRun(job: DataJob, regions: Region[], runtime: number): { iops: number; mbps: number } {
  const lines = ['[global]', 'ioengine=libaio', 'direct=1', `rw=${job.rw}`, `bs=${job.bs}`, `iodepth=${job.iodepth}`, 'time_based', `runtime=${runtime}`, 'ramp_time=1', 'randrepeat=0', 'norandommap', 'allow_file_create=0', 'group_reporting', '']
  regions.forEach((r, i) => lines.push(`[j${i}]`, `filename=${r.file}`, `offset=${r.offset}`, `size=${r.size}`, ''))
  const jobFile = path.join(path.dirname(regions[0].file), '..', `fio-${process.pid}.job`)
  fs.writeFileSync(jobFile, lines.join('\n'))
  try {
    const out = execFileSync('fio', ['--output-format=json', jobFile], { encoding: 'utf8', maxBuffer: 64 << 20 })
    const j = JSON.parse(out.slice(out.indexOf('{'))).jobs[0]
    const side = job.rw.includes('read') ? j.read : j.write
    return { iops: side.iops, mbps: side.bw_bytes / 1e6 }
  } finally {
    fs.rmSync(jobFile, { force: true })
  }
}

/**
 * A raw ext4 image of `imageMiB` holding one file of `fileMiB` of random bytes;
 * returns the largest contiguous run of that file's blocks (byte offset, size).
 */
export function makeDataImage(dir: string, img: string, imageMiB: number, fileMiB: number): { offset: number; size: number } {
  const tree = path.join(dir, 'tree-data')
  fs.mkdirSync(tree, { recursive: true })
  const f = path.join(tree, 'data.bin')
  execFileSync('head', ['-c', String(fileMiB << 20), '/dev/urandom'], { stdio: ['ignore', fs.openSync(f, 'w'), 'inherit'] })
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', tree, img, `${imageMiB}M`])
  fs.rmSync(tree, { recursive: true, force: true })
  const blocks = execFileSync('debugfs', ['-R', 'blocks /data.bin', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 256 << 20 })
    .trim()
    .split(/\s+/)
    .map(Number)
  let best: [number, number] = [0, 0]
  let start = 0
  for (let i = 1; i <= blocks.length; i++) {
    if (i < blocks.length && blocks[i] === blocks[i - 1] + 1) continue
    if (i - start > best[1]) best = [blocks[start], i - start]
    start = i
  }
  return { offset: best[0] * 4096, size: best[1] * 4096 }
}

export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

export interface DataRow {
  job: string
  images: number
  introspect: number
  passthrough: number
  unit: 'IOPS' | 'MB/s'
  ratio: number
}

/** Alternating rounds of every job on the two sets of regions; medians. */
export function measureJobs(images: number, introspect: Region[], passthrough: Region[], runtime: number, rounds: number, progress: (line: string) => void, only: string[] = []): DataRow[] {
  const rows: DataRow[] = []
  for (const job of DATA_JOBS.filter((j) => !only.length || only.includes(`${j.rw}-${j.bs}-qd${j.iodepth}`))) {
    const a: number[] = []
    const b: number[] = []
    const seq = job.bs === '1m'
    for (let r = 0; r < rounds; r++) {
      // Alternate which goes first, so neither always meets the other's leftovers.
      const order = r % 2 === 0 ? ['i', 'p'] : ['p', 'i']
      for (const which of order) {
        const res = fioRun(job, which === 'i' ? introspect : passthrough, runtime)
        ;(which === 'i' ? a : b).push(seq ? res.mbps : res.iops)
      }
      progress(`  ${images} image(s), ${job.name}, round ${r + 1}/${rounds}: introspect ${Math.round(a[a.length - 1])}, --no-introspect ${Math.round(b[b.length - 1])}`)
    }
    const ma = median(a)
    const mb = median(b)
    rows.push({ job: job.name, images, introspect: ma, passthrough: mb, unit: seq ? 'MB/s' : 'IOPS', ratio: ma / mb })
  }
  return rows
}

export function dataTable(rows: DataRow[]): string {
  const out = ['| job | images | `--no-introspect` mount | introspected (default) | ratio | target ≥ 0.9× |', '|---|---:|---:|---:|---:|---|']
  for (const r of rows) out.push(`| ${r.job} | ${r.images} | ${Math.round(r.passthrough).toLocaleString('en')} ${r.unit} | ${Math.round(r.introspect).toLocaleString('en')} ${r.unit} | ${r.ratio.toFixed(2)} | ${r.ratio >= 0.9 ? 'met' : 'MISSED'} |`)
  return out.join('\n')
}
