// Mutation fuzzer (issue 19): small valid images (ext2/ext4, raw and qcow2,
// with and without a partition table, a few files) get random bytes of their
// meta-data changed; every mutant's inspection must end (exit status 0 or 1:
// an IntrospectError, never another exception), and its RSS stays bounded.
// In-process through inspectImage for speed; a sample through the CLI for the
// exit status and the absence of stack traces. VMDI_FUZZ_MUTANTS=N for more.
import { execFileSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { IntrospectError } from '../../src/introspect/errors'
import { inspectImage } from '../../src/introspect/inspect'
import { CLI } from '../helpers/cli'
import { timed } from '../helpers/hostile'
import { rng } from '../helpers/rng'

const MUTANTS = Number(process.env.VMDI_FUZZ_MUTANTS) || 300
const CLI_SAMPLE = Math.max(4, Math.floor(MUTANTS / 25))
const RSS_BOUND_KIB = 400 * 1024
/** Extra RSS the whole in-process run may gain (leaks or one huge allocation would pass it). */
const INPROC_RSS_GROWTH = 600 << 20

let dir: string
const seeds: { name: string; bytes: Buffer; hot: [number, number][] }[] = []

function build(name: string, mkfs: string[], opts: { gpt?: boolean; qcow2?: boolean } = {}): void {
  const raw = path.join(dir, `${name}.raw`)
  execFileSync('truncate', ['-s', '4M', raw])
  let fsStart = 0
  if (opts.gpt) {
    execFileSync('sfdisk', ['-q', raw], { input: 'label: gpt\nstart=2048, size=6000, type=L\n' })
    fsStart = 2048 * 512
  }
  const part = path.join(dir, `${name}.part`)
  execFileSync('truncate', ['-s', opts.gpt ? '3000K' : '4M', part])
  const tree = path.join(dir, `${name}.tree`)
  fs.mkdirSync(path.join(tree, 'boot', 'd'), { recursive: true })
  for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(tree, 'boot', 'd', `f${i}`), Buffer.alloc(1000 * i + 1, i))
  fs.symlinkSync('boot/d/f3', path.join(tree, 'link'))
  execFileSync('mke2fs', ['-q', '-F', ...mkfs, '-d', tree, part], { stdio: 'pipe' })
  const fd = fs.openSync(raw, 'r+')
  const p = fs.readFileSync(part)
  fs.writeSync(fd, p, 0, p.length, fsStart)
  fs.closeSync(fd)
  // Meta-data to mutate: the partition table, the superblock, descriptors, bitmaps and the first inode tables.
  const hot: [number, number][] = [[fsStart, 64 << 10]]
  if (opts.gpt) hot.push([0, 34 * 512])
  let file = raw
  if (opts.qcow2) {
    file = path.join(dir, `${name}.qcow2`)
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', raw, file])
    hot.push([0, 64 << 10]) // header, L1, refcounts, L2 tables come first in a fresh convert
  }
  const bytes = fs.readFileSync(file)
  seeds.push({ name, bytes, hot: hot.map(([s, n]) => [s, Math.min(n, bytes.length - s)]) })
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-fuzz-'))
  build('ext2', ['-t', 'ext2', '-b', '1024'])
  build('ext4', ['-t', 'ext4', '-b', '4096', '-N', '256'])
  build('ext4-gpt', ['-t', 'ext4', '-b', '1024'], { gpt: true })
  build('ext4-qcow2', ['-t', 'ext4', '-b', '4096', '-N', '256'], { qcow2: true })
}, 60_000)
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** Mutant k of a seed: 1–16 changes, each a random byte, a 32-bit field set to 0/1/max/random, or a copied 4-byte word. */
function mutant(k: number): { name: string; file: string } {
  const rand = rng(0x19190000 + k)
  const seed = seeds[k % seeds.length]
  const b = Buffer.from(seed.bytes)
  const n = 1 + Math.floor(rand() * 16)
  for (let i = 0; i < n; i++) {
    const [s, len] = seed.hot[Math.floor(rand() * seed.hot.length)]
    const at = s + (Math.floor(rand() * (len - 4)) & ~3)
    const how = rand()
    if (how < 0.4) b[at + Math.floor(rand() * 4)] = Math.floor(rand() * 256)
    else if (how < 0.8) b.writeUInt32LE([0, 1, 0xffffffff, 0x80000000, Math.floor(rand() * 2 ** 32)][Math.floor(rand() * 5)], at)
    else b.writeUInt32LE(b.readUInt32LE(s + (Math.floor(rand() * (len - 4)) & ~3)), at)
  }
  const file = path.join(dir, `m${k}-${seed.name}${seed.name.endsWith('qcow2') ? '.qcow2' : '.img'}`)
  fs.writeFileSync(file, b)
  return { name: `mutant ${k} of ${seed.name}`, file }
}

describe('mutation fuzzer', () => {
  it(`${MUTANTS} mutants in-process: each ends with a report or an IntrospectError; RSS bounded`, async () => {
    const rss0 = process.memoryUsage().rss
    let ok = 0
    let refused = 0
    let maxRss = rss0
    for (let k = 0; k < MUTANTS; k++) {
      const { name, file } = mutant(k)
      const t0 = Date.now()
      try {
        const ins = await inspectImage(file)
        await ins.close()
        ok++
      } catch (e) {
        if (!(e instanceof IntrospectError)) throw new Error(`${name}: not an IntrospectError: ${(e as Error).stack}`)
        refused++
      }
      expect(Date.now() - t0, `${name} took too long`).toBeLessThan(15_000)
      maxRss = Math.max(maxRss, process.memoryUsage().rss)
      fs.rmSync(file)
    }
    expect(ok + refused).toBe(MUTANTS)
    expect(ok, 'some mutants are still images').toBeGreaterThan(0)
    expect(maxRss - rss0, `RSS grew ${Math.round((maxRss - rss0) / 2 ** 20)} MiB`).toBeLessThan(INPROC_RSS_GROWTH)
  }, 600_000)

  it(`a sample of ${CLI_SAMPLE} mutants through the CLI: exit 0/1, no stack trace, max RSS bounded`, () => {
    for (let j = 0; j < CLI_SAMPLE; j++) {
      const k = Math.floor((j * MUTANTS) / CLI_SAMPLE)
      const { name, file } = mutant(k)
      const r = timed([CLI, 'inspect', '--json', file], 30_000)
      expect([0, 1], `${name}: exit ${r.status}\n${r.stderr.slice(0, 500)}`).toContain(r.status)
      expect(r.stderr, name).not.toMatch(/\n\s+at .*:\d+:\d+/)
      expect(r.maxRssKiB, name).toBeLessThan(RSS_BOUND_KIB)
      fs.rmSync(file)
    }
  }, 600_000)
})
