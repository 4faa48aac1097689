// A Datapath over temporary files, without a FUSE mount: real ext4 images made
// by mke2fs -d from generated trees, changes to them made by debugfs on a
// copy (the differing 4 KiB blocks are what a guest would write), and small
// helpers to wait for scans and read through the datapath.
import { execFileSync, spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { expect } from 'vitest'
import { BlockClass, className } from '../../src/introspect/classes'
import { inspectImage } from '../../src/introspect/inspect'
import type { ExtentMap } from '../../src/introspect/map/extent-map'
import { Datapath, type DatapathOptions, type DatapathStats, type ImageEntry } from '../../src/placement/datapath'
import { rng } from './rng'
import { ranges } from './e2oracle'

export const BLOCK = 4096
/** Days: no background destage unless a test asks for it. */
export const NEVER = 24 * 3600 * 1000

/** Seeded pseudo-random bytes (deterministic file contents). */
export function seededBytes(seed: number, n: number): Buffer {
  const r = rng(seed)
  const out = Buffer.alloc(n + 4)
  for (let i = 0; i < n; i += 4) out.writeUInt32LE(Math.floor(r() * 0x1_0000_0000), i)
  return out.subarray(0, n)
}

/**
 * A guest tree: `dirs` directories of `perDir` files of 0..40 KiB (so some are
 * small files, some are not), a deep path, a slow symlink, a file with an
 * xattr, and /big (1 MiB of seeded bytes: in-use file data).
 */
export function makeTree(dir: string, dirs = 12, perDir = 25): void {
  fs.mkdirSync(dir, { recursive: true })
  for (let d = 0; d < dirs; d++) {
    const sub = path.join(dir, `d${String(d).padStart(2, '0')}`)
    fs.mkdirSync(sub)
    for (let f = 0; f < perDir; f++) {
      const size = ((d * perDir + f) * 2654435761) % (40 << 10)
      fs.writeFileSync(path.join(sub, `f${String(f).padStart(3, '0')}`), seededBytes(d * 1000 + f + 1, size))
    }
  }
  const deep = path.join(dir, ...Array.from({ length: 10 }, (_, i) => `level${i}`))
  fs.mkdirSync(deep, { recursive: true })
  fs.writeFileSync(path.join(deep, 'bottom'), 'deep\n')
  fs.symlinkSync('/' + Array(6).fill('a-long-symlink-target-component').join('/'), path.join(dir, 'slowlink'))
  fs.writeFileSync(path.join(dir, 'big'), seededBytes(77, 1 << 20))
}

/** An ext4 image of `mib` MiB with 4 KiB blocks holding `tree`. */
export function mkExt4(file: string, tree: string, mib = 32, extra: string[] = []): void {
  fs.mkdirSync(path.dirname(file), { recursive: true })
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', ...extra, '-d', tree, file, `${mib}M`], { stdio: ['ignore', 'ignore', 'pipe'] })
}

/** Copies `src` to `dst` and runs debugfs -w commands on the copy (no journal involved: home blocks change). */
export function debugfsCopy(src: string, dst: string, cmds: string[]): void {
  fs.copyFileSync(src, dst)
  const cmdFile = `${dst}.cmds`
  fs.writeFileSync(cmdFile, cmds.join('\n') + '\n')
  const r = spawnSync('debugfs', ['-w', '-f', cmdFile, dst], { encoding: 'utf8' })
  fs.rmSync(cmdFile)
  if (r.status !== 0) throw new Error(`debugfs on ${dst} exited ${r.status}: ${r.stderr}`)
}

/** Indexes of the 4 KiB blocks that differ between two equally long buffers. */
export function changedBlocks(a: Buffer, b: Buffer): number[] {
  if (a.length !== b.length) throw new Error(`sizes differ: ${a.length} and ${b.length}`)
  const out: number[] = []
  for (let k = 0; k < a.length / BLOCK; k++) if (!a.subarray(k * BLOCK, (k + 1) * BLOCK).equals(b.subarray(k * BLOCK, (k + 1) * BLOCK))) out.push(k)
  return out
}

/** The file's own classes, as `inspect` sees them from the file alone: the map and its counts by class name. */
export async function inspectMap(abs: string, opts: { storeRoot?: string; smallFileBytes?: number; bootFiles?: boolean } = {}): Promise<{ map: ExtentMap; counts: Record<string, number>; format: string }> {
  const ins = await inspectImage(abs, { storeRoot: opts.storeRoot ?? path.dirname(abs), smallFileBytes: opts.smallFileBytes ?? 0, bootFiles: opts.bootFiles ?? false })
  try {
    const fm = ins.fileMaps?.find((m) => m.path === abs) ?? ins.fileMaps?.[0]
    if (!fm) throw new Error(`inspect made no file map of ${abs}`)
    return { map: fm.map, counts: countsOf(fm.map), format: `${ins.report.format}/${ins.report.subformat}` }
  } finally {
    await ins.close()
  }
}

export function countsOf(map: ExtentMap): Record<string, number> {
  return Object.fromEntries([...map.countByClass()].sort((a, b) => a[0] - b[0]).map(([c, n]) => [className(c as BlockClass), n]))
}

export async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

export type ImageStats = DatapathStats['images'][number]

export function imageStats(dp: Datapath, rel: string): ImageStats {
  const s = dp.stats().images.find((i) => i.path === rel)
  if (!s) throw new Error(`no image ${rel} in the datapath's stats (${dp.stats().images.map((i) => i.path).join(', ')})`)
  return s
}

/** Waits until the image's scan is done and its preload finished (scan.warm). Throws with the scan's error if it failed. */
export async function warm(dp: Datapath, rel: string, ms = 30_000): Promise<ImageStats> {
  await until(() => {
    const s = imageStats(dp, rel).scan
    if (s.state === 'failed') throw new Error(`the scan of ${rel} failed: ${s.error}`)
    return s.state === 'done' && s.warm
  }, ms, `the scan and preload of ${rel}`)
  return imageStats(dp, rel)
}

export async function readVia(dp: Datapath, e: ImageEntry, pos: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len)
  const n = await dp.read(e, buf, len, pos)
  return buf.subarray(0, n)
}

/** Writes `bytes` through the datapath in requests of at most 128 KiB (the mount's max_write). */
export async function writeVia(dp: Datapath, e: ImageEntry, pos: number, bytes: Buffer): Promise<void> {
  for (let at = 0; at < bytes.length; at += 128 << 10) {
    const chunk = bytes.subarray(at, Math.min(bytes.length, at + (128 << 10)))
    expect(await dp.write(e, chunk, chunk.length, pos + at)).toBe(chunk.length)
  }
}

/**
 * Replays the blocks that differ between `before` and `after` through the
 * datapath, one 4 KiB write each, in the order a guest's writeback often has
 * them: every block but the inode tables first, inode-table blocks last.
 */
export async function replay(dp: Datapath, e: ImageEntry, before: Buffer, after: Buffer, classBefore: (b: number) => BlockClass): Promise<number[]> {
  const changed = changedBlocks(before, after)
  const itable = changed.filter((k) => classBefore(k) === BlockClass.InodeTable)
  for (const k of [...changed.filter((k) => classBefore(k) !== BlockClass.InodeTable), ...itable]) {
    const blk = Buffer.from(after.subarray(k * BLOCK, (k + 1) * BLOCK))
    expect(await dp.write(e, blk, BLOCK, k * BLOCK)).toBe(BLOCK)
  }
  return changed
}

/** e2fsck -fn: its exit status and output. */
export function fsck(file: string): { status: number | null; out: string } {
  const r = spawnSync('e2fsck', ['-fn', file], { encoding: 'utf8' })
  return { status: r.status, out: `${r.stdout}${r.stderr}` }
}

/** dumpe2fs's free block ranges of group 0. */
export function freeBlocksOfGroup0(file: string): [number, number][] {
  const dump = execFileSync('dumpe2fs', [file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 64 << 20 })
  const g0 = dump.split(/^Group 1: /m)[0].split(/^Group 0: /m)[1] ?? ''
  return ranges(/^\s+Free blocks: ([0-9, -]*)$/m.exec(g0)?.[1] ?? '')
}

/** The fs blocks of a file (debugfs `blocks`). */
export function blocksOf(image: string, file: string): number[] {
  const out = execFileSync('debugfs', ['-R', `blocks ${file}`, image], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
  return out.trim().split(/\s+/).filter(Boolean).map(Number)
}

/** Options every test starts from: 64 MiB of RAM, a 256 MiB SSD store, no background destage. */
export function dpOptions(storeRoot: string, ssdPath: string, over: Partial<DatapathOptions> = {}): DatapathOptions {
  return { storeRoot, ramBytes: 64 << 20, ssdPath, ssdMaxBytes: 256 << 20, exclude: [], destageIntervalMs: NEVER, smallFileBytes: 0, bootFiles: false, newDataBytes: 0, ...over }
}
