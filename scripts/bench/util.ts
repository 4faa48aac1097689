// Small helpers of the benchmark harness (npm run bench): child processes that
// can be interrupted, progress lines, a seeded RNG and a gamma sampler.

import { ChildProcess, spawn, SpawnOptions } from 'child_process'
import fs from 'fs'
import { sys } from '../../src/native/sys'
import { formatSize } from '../../src/size'

const T0 = Date.now()

/** A progress line on stderr: "[ 123.4 s] message". */
export function progress(msg: string): void {
  const s = ((Date.now() - T0) / 1000).toFixed(1).padStart(7)
  process.stderr.write(`[bench ${s} s] ${msg}\n`)
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

/** Children running now: SIGINT kills them before the rig is torn down. */
export const running = new Set<ChildProcess>()

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

export class CommandError extends Error {
  constructor(
    readonly cmd: string,
    readonly result: RunResult,
  ) {
    super(`${cmd} failed (${result.signal ? `signal ${result.signal}` : `exit status ${result.code}`}): ${(result.stderr || result.stdout).trim().split('\n').slice(-6).join(' | ')}`)
  }
}

export interface RunOptions extends SpawnOptions {
  /** Resolve instead of throwing on a non-zero exit. */
  allowFail?: boolean
  /** Discard stdout instead of collecting it (commands with huge output). */
  discardStdout?: boolean
  /** Kill the command (SIGKILL) after this many ms. */
  timeoutMs?: number
  input?: string
}

/** Runs a command to completion; throws CommandError on a non-zero exit unless allowFail. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const { allowFail, discardStdout, timeoutMs, input, ...spawnOpts } = opts
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: [input !== undefined ? 'pipe' : 'ignore', discardStdout ? 'ignore' : 'pipe', 'pipe'], ...spawnOpts })
    running.add(child)
    let stdout = ''
    let stderr = ''
    child.stdout?.setEncoding('utf8')
    child.stderr?.setEncoding('utf8')
    child.stdout?.on('data', (d: string) => {
      if (stdout.length < 4 << 20) stdout += d
    })
    child.stderr?.on('data', (d: string) => {
      if (stderr.length < 1 << 20) stderr += d
    })
    if (input !== undefined) child.stdin!.end(input)
    const timer = timeoutMs ? setTimeout(() => child.kill('SIGKILL'), timeoutMs) : null
    child.on('error', (e) => {
      running.delete(child)
      if (timer) clearTimeout(timer)
      reject(new Error(`${cmd}: ${e.message}`))
    })
    child.on('close', (code, signal) => {
      running.delete(child)
      if (timer) clearTimeout(timer)
      const r = { code, signal, stdout, stderr }
      if (code !== 0 && !allowFail) reject(new CommandError(`${cmd} ${args.join(' ')}`.slice(0, 300), r))
      else resolve(r)
    })
  })
}

/** Seconds since `t` (a process.hrtime.bigint()). */
export function since(t: bigint): number {
  return Number(process.hrtime.bigint() - t) / 1e9
}

/** mulberry32: a small seeded PRNG, uniform in [0, 1) (the emulated disk's own). */
export { mulberry32 as rng } from '../../src/store/hdd-model'

/**
 * Gamma(shape k ≥ 1) with the given mean, by Marsaglia–Tsang, from `uni`. Filebench's
 * cvar-gamma takes the same two parameters (mean, gamma = shape).
 */
export function gamma(uni: () => number, mean: number, k: number): () => number {
  const theta = mean / k
  const d = k - 1 / 3
  const c = 1 / Math.sqrt(9 * d)
  const normal = () => Math.sqrt(-2 * Math.log(1 - uni())) * Math.cos(2 * Math.PI * uni())
  return () => {
    for (;;) {
      const z = normal()
      const v = (1 + c * z) ** 3
      if (v <= 0) continue
      if (Math.log(1 - uni()) < 0.5 * z * z + d - d * v + d * Math.log(v)) return d * v * theta
    }
  }
}

/** Bytes in the reports: GiB and beyond in GiB with two decimals, smaller sizes as formatSize shows them. */
export function fmtBytes(n: number): string {
  return n >= 2 ** 30 ? formatSize(n, { unit: 'GiB', digits: 2 }) : formatSize(n)
}

/** Seeded Fisher–Yates, in place. */
export function shuffle<T>(a: T[], uni: () => number): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(uni() * (i + 1))
    ;[a[i], a[j]] = [a[j], a[i]]
  }
  return a
}

function rangePairs(r: number[] | number, what: string): [number, number][] {
  if (typeof r === 'number') throw new Error(`${what}: SEEK_DATA failed (errno ${-r})`)
  const out: [number, number][] = []
  for (let i = 0; i < r.length; i += 2) out.push([r[i], r[i + 1]])
  return out
}

/** The bytes of a sparse file where it holds data: its ranges, and their bytes back to back. */
export interface SparseImage {
  size: number
  ranges: [number, number][]
  bytes: Buffer
}

/** Reads a sparse file's data ranges into memory (the holes are only listed, never read). */
export function readSparse(file: string): SparseImage {
  const fd = fs.openSync(file, 'r')
  try {
    const size = fs.fstatSync(fd).size
    const ranges = rangePairs(sys().dataRanges(fd, 0, size, 1e9), file)
    const bytes = Buffer.allocUnsafe(ranges.reduce((a, [lo, hi]) => a + hi - lo, 0))
    let at = 0
    for (const [lo, hi] of ranges) {
      if (fs.readSync(fd, bytes, at, hi - lo, lo) !== hi - lo) throw new Error(`${file}: short read at ${lo}`)
      at += hi - lo
    }
    return { size, ranges, bytes }
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * Makes `dst` hold the bytes of `src` (read with readSparse) without replacing
 * it (its inode stays) and without reading it: where dst holds data that src
 * has as holes, holes are punched; then every data range of
 * src is written. Returns the number of holes punched.
 */
export function writeSparseOver(src: SparseImage, dst: string): number {
  const d = fs.openSync(dst, 'r+')
  try {
    if (fs.fstatSync(d).size !== src.size) fs.ftruncateSync(d, src.size)
    const holes: [number, number][] = []
    let i = 0
    for (const [lo0, hi] of rangePairs(sys().dataRanges(d, 0, src.size, 1e9), dst)) {
      let lo = lo0
      while (i < src.ranges.length && src.ranges[i][1] <= lo) i++
      for (let j = i; lo < hi; j++) {
        const r = src.ranges[j]
        if (!r || r[0] >= hi) {
          holes.push([lo, hi])
          break
        }
        if (r[0] > lo) holes.push([lo, r[0]])
        lo = Math.max(lo, r[1])
      }
    }
    for (const [lo, hi] of holes) {
      const r = sys().punchHole(d, lo, hi - lo)
      if (r < 0) throw new Error(`${dst}: punching a hole at ${lo} (${hi - lo} bytes) failed (errno ${-r})`)
    }
    let at = 0
    for (const [lo, hi] of src.ranges) {
      fs.writeSync(d, src.bytes, at, hi - lo, lo)
      at += hi - lo
    }
    return holes.length
  } finally {
    fs.closeSync(d)
  }
}
