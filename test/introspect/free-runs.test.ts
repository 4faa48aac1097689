// ImageMap.freeFileRuns and bitmapCoverage (src/introspect/map/image-map.ts),
// what the native data path asks of the map: the file blocks whose every
// byte is free in an ext file system's block bitmaps now, against dumpe2fs's
// "Free blocks:" lists (BLOCK_UNINIT groups free whole, as unallocated()
// counts them) turned into file blocks, and against unallocated() asked of
// every block (raw, MBR with an ext2 of 1 KiB blocks at sector 63, GPT, LVM,
// qcow2 with 64 KiB and 512-byte clusters, VMDK); the groups a write over a
// block bitmap speaks for (flex_bg: several in one 4 KiB block); and a 64 GiB
// file system walked without holding the event loop.
import { execFileSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BlockClass } from '../../src/introspect/classes'
import { inspectImage, type Inspection } from '../../src/introspect/inspect'
import { FILE_BLOCK } from '../../src/introspect/map/fold'
import { ImageMap, sortSpans } from '../../src/introspect/map/image-map'
import { ranges } from '../helpers/e2oracle'
import { containerFixtures } from '../helpers/qemu'

let dir = ''
let tmp = ''
beforeAll(() => {
  dir = containerFixtures()
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-free-'))
})
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

async function withMap<T>(file: string, f: (m: ImageMap, ins: Inspection) => Promise<T>): Promise<T> {
  const ins = await inspectImage(file)
  const m = ImageMap.fromInspection(ins, file)
  try {
    return await f(m, ins)
  } finally {
    await m.close()
  }
}

type Runs = [number, number][]

/** Volume bytes [start, start + size) of `image` as a file of their own (raw images only). */
function extract(image: string, start: number, size: number, out: string): string {
  execFileSync('dd', [`if=${image}`, `of=${out}`, 'bs=512', `skip=${start / 512}`, `count=${size / 512}`, 'status=none'])
  return out
}

interface Dump {
  blockSize: number
  /** Free fs blocks, [first, last] ascending: dumpe2fs's "Free blocks:" lists, a BLOCK_UNINIT group whole (uninit_bg/metadata_csum). */
  free: [number, number][]
  /** Per group: [first, last] fs block, and its block bitmap's block. */
  groups: { first: number; last: number; bitmap: number }[]
}

function dump(part: string): Dump {
  const text = execFileSync('dumpe2fs', [part], { encoding: 'utf8', maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'ignore'] })
  const blockSize = Number(/^Block size:\s+(\d+)/m.exec(text)![1])
  const csum = /^Filesystem features:.*\b(metadata_csum|uninit_bg)\b/m.test(text)
  const free: [number, number][] = []
  const groups: Dump['groups'] = []
  for (const body of text.split(/^Group \d+: /m).slice(1)) {
    const [, a, b] = /^\(Blocks (\d+)-(\d+)\)/.exec(body)!.map(Number)
    groups.push({ first: a, last: b, bitmap: Number(/Block bitmap at (\d+)/.exec(body)![1]) })
    if (csum && /BLOCK_UNINIT/.test(body.split('\n')[0])) free.push([a, b])
    else free.push(...ranges(/^\s*Free blocks: ([0-9, -]*)$/m.exec(body)![1]))
  }
  return { blockSize, free, groups }
}

/** Whole 4 KiB file blocks of byte spans [lo, hi) (any order), as ascending merged runs. */
function wholeBlocks(spans: [number, number][]): Runs {
  spans.sort((a, b) => a[0] - b[0])
  const out: Runs = []
  for (let i = 0; i < spans.length; ) {
    let [lo, hi] = spans[i++]
    while (i < spans.length && spans[i][0] <= hi) hi = Math.max(hi, spans[i++][1])
    const b0 = Math.ceil(lo / FILE_BLOCK)
    const b1 = Math.floor(hi / FILE_BLOCK)
    if (b1 > b0) out.push([b0, b1 - b0])
  }
  return out
}

/** The oracle for a raw image: every scanned ext volume's dumpe2fs free lists, placed at the volume's offset. */
function oracleRaw(file: string, ins: Inspection): Runs {
  const spans: [number, number][] = []
  for (const { volume } of ins.filesystems) {
    const part = volume.start === 0 && volume.size === fs.statSync(file).size ? file : extract(file, volume.start, volume.size, path.join(tmp, `part${volume.index}`))
    const d = dump(part)
    for (const [a, b] of d.free) spans.push([volume.start + a * d.blockSize, volume.start + (b + 1) * d.blockSize])
  }
  return wholeBlocks(spans)
}

/** Runs of the blocks `m.unallocated` answers true for, block by block. */
async function unallocatedRuns(m: ImageMap, file: string): Promise<Runs> {
  const out: Runs = []
  const n = Math.ceil(fs.statSync(file).size / FILE_BLOCK)
  for (let b = 0; b < n; b++) {
    if (!(await m.unallocated(b * FILE_BLOCK, FILE_BLOCK))) continue
    const last = out[out.length - 1]
    if (last && last[0] + last[1] === b) last[1]++
    else out.push([b, 1])
  }
  return out
}

const total = (r: Runs) => r.reduce((a, [, c]) => a + c, 0)

function sorted(r: Runs): boolean {
  for (let i = 1; i < r.length; i++) if (r[i][0] <= r[i - 1][0] + r[i - 1][1]) return false
  return r.every(([s, c]) => Number.isSafeInteger(s) && s >= 0 && c > 0)
}

/** A raw ext file system made by mke2fs -d from a few files, with one removed afterwards (a hole in the bitmaps). */
function makeFs(name: string, size: string, mkfsArgs: string[]): string {
  const tree = path.join(tmp, `${name}-tree`)
  fs.mkdirSync(path.join(tree, 'sub'), { recursive: true })
  for (let k = 0; k < 12; k++) fs.writeFileSync(path.join(tree, k % 2 ? 'sub' : '', `f${k}`), Buffer.alloc(1000 + k * 37_000, k + 1))
  const img = path.join(tmp, `${name}.raw`)
  execFileSync('truncate', ['-s', size, img])
  execFileSync('mke2fs', ['-q', '-F', ...mkfsArgs, '-d', tree, img], { stdio: 'ignore' })
  execFileSync('debugfs', ['-w', '-R', 'rm /f4', img], { stdio: 'ignore' })
  return img
}

describe('freeFileRuns', () => {
  it.each([
    ['ext4, 4 KiB blocks', 'ext4-4k', '64M', ['-t', 'ext4', '-b', '4096']],
    ['ext4, 1 KiB blocks (a file block is free when all four fs blocks are)', 'ext4-1k', '48M', ['-t', 'ext4', '-b', '1024']],
    ['ext2, 1 KiB blocks, no uninit_bg', 'ext2-1k', '24M', ['-t', 'ext2', '-b', '1024']],
  ])('raw %s: the dumpe2fs free lists as file blocks, and unallocated() block by block', async (_, name, size, args) => {
    const file = makeFs(name, size, args)
    await withMap(file, async (m, ins) => {
      const got = await m.freeFileRuns()
      expect(sorted(got)).toBe(true)
      expect(got).toEqual(oracleRaw(file, ins))
      expect(got).toEqual(await unallocatedRuns(m, file))
      expect(total(got)).toBeGreaterThan(1000)
      expect(total(got)).toBeLessThan(fs.statSync(file).size / FILE_BLOCK)
    })
  })

  it.each(['mbr.raw', 'gpt.raw'])('%s (partitions at non-zero offsets; mbr.raw: an ext2 of 1 KiB blocks at sector 63): the dumpe2fs free lists as file blocks', async (name) => {
    const file = path.join(dir, name)
    await withMap(file, async (m, ins) => {
      expect(ins.filesystems.length).toBeGreaterThanOrEqual(2)
      expect(ins.filesystems.every((f) => f.volume.start > 0)).toBe(true)
      const got = await m.freeFileRuns()
      expect(sorted(got)).toBe(true)
      expect(got).toEqual(oracleRaw(file, ins))
      expect(got).toEqual(await unallocatedRuns(m, file))
      expect(total(got)).toBeGreaterThan(1000)
    })
  })

  it.each(['lvm.raw', 'mbr-v3.qcow2', 'mbr-v3-c512.qcow2', 'mbr-monolithicSparse.vmdk', 'mbr-delta2.qcow2'])('%s: exactly the file blocks unallocated() answers true for', async (name) => {
    const file = path.join(dir, name)
    await withMap(file, async (m) => {
      const got = await m.freeFileRuns()
      expect(sorted(got)).toBe(true)
      expect(got).toEqual(await unallocatedRuns(m, file))
      // 512-byte clusters: qemu-img stores only clusters with bytes in them, and free blocks are zeros.
      if (name !== 'mbr-delta2.qcow2' && name !== 'mbr-v3-c512.qcow2') expect(total(got)).toBeGreaterThan(0)
    })
  })

  it('qcow2: the raw image\'s free guest bytes where the qcow2 stores them', async () => {
    await withMap(path.join(dir, 'mbr-v3.qcow2'), async (q, ins) => {
      await withMap(path.join(dir, 'mbr.raw'), async (raw) => {
        const rawFree = new Set<number>()
        for (const [s, c] of await raw.freeFileRuns()) for (let b = s; b < s + c; b++) rawFree.add(b)
        let n = 0
        for (const [s, c] of await q.freeFileRuns()) {
          for (let b = s; b < s + c; b++) {
            const loc = ins.disk.locate(0, b * FILE_BLOCK)
            expect(loc.kind).toBe('guest')
            if (loc.kind === 'guest') expect(rawFree.has(loc.guestOffset / FILE_BLOCK), `qcow2 block ${b}`).toBe(true)
            n++
          }
        }
        expect(n).toBeGreaterThan(0)
      })
    })
  })

  it('qcow2 with its clusters stored in reverse guest order (runs reach the file out of order): unallocated() block by block, the raw image\'s free blocks where it stores them', async () => {
    const rawFile = makeFs('rev', '32M', ['-t', 'ext4', '-b', '1024'])
    const q = path.join(tmp, 'rev.qcow2')
    const CL = 65536
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${CL}`, q, '32M'])
    const raw = fs.readFileSync(rawFile)
    const cmds: string[] = []
    for (let k = raw.length / CL - 1; k >= 0; k--) {
      const chunk = path.join(tmp, `rev-${k}`)
      fs.writeFileSync(chunk, raw.subarray(k * CL, (k + 1) * CL))
      cmds.push('-c', `write -q -s ${chunk} ${k * CL} ${CL}`)
    }
    execFileSync('qemu-io', ['-f', 'qcow2', ...cmds, q])
    await withMap(q, async (m, ins) => {
      await withMap(rawFile, async (r) => {
        const got = await m.freeFileRuns()
        expect(sorted(got)).toBe(true)
        expect(got).toEqual(await unallocatedRuns(m, q))
        const rawFree = new Set<number>()
        for (const [s, c] of await r.freeFileRuns()) for (let b = s; b < s + c; b++) rawFree.add(b)
        let n = 0
        for (const [s, c] of got) {
          for (let b = s; b < s + c; b++) {
            const loc = ins.disk.locate(0, b * FILE_BLOCK)
            expect(loc.kind === 'guest' && rawFree.has(loc.guestOffset / FILE_BLOCK), `qcow2 block ${b}`).toBe(true)
            n++
          }
        }
        // Every raw free block is stored (all clusters written), so the counts agree.
        expect(n).toBe(rawFree.size)
        expect(n).toBeGreaterThan(1000)
      })
    })
  })

  it('sortSpans: random spans, more than one chunk, the same order as a plain sort; it ticks', async () => {
    let seed = 7
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31
    const spans: [number, number][] = Array.from({ length: 50_000 }, () => {
      const lo = Math.floor(rnd() * 2 ** 40)
      return [lo, lo + 1 + Math.floor(rnd() * 9999)] as [number, number]
    })
    let ticks = 0
    const got = await sortSpans(spans.map((x) => [...x] as [number, number]), async () => void ticks++)
    expect(got.map((x) => x[0])).toEqual(spans.map((x) => x[0]).sort((a, b) => a - b))
    expect(new Set(got.map((x) => x.join())).size).toBe(new Set(spans.map((x) => x.join())).size)
    expect(ticks).toBeGreaterThan(7)
    expect(await sortSpans([], async () => undefined)).toEqual([])
  })

  it('an empty, saved or closed-over map: none', async () => {
    expect(await ImageMap.empty().freeFileRuns()).toEqual([])
    expect(ImageMap.empty().bitmapCoverage(0, 1 << 20)).toEqual([])
    await withMap(path.join(dir, 'mbr.raw'), async (m) => {
      const saved = ImageMap.fromSaved(m.serialize())
      expect(await saved.freeFileRuns()).toEqual([])
      expect(saved.bitmapCoverage(0, 1 << 20)).toEqual([])
    })
  })

  it('follows the bitmaps as they are now: a write marking blocks used takes them out, one clearing them puts them back', async () => {
    const file = makeFs('live', '32M', ['-t', 'ext4', '-b', '4096'])
    const d = dump(file)
    await withMap(file, async (m) => {
      const before = await m.freeFileRuns()
      const g0 = d.groups[0]
      const [a] = d.free.find(([x, y]) => y - x >= 64 && x >= g0.first && y <= g0.last)!
      const fd = fs.openSync(file, 'r+')
      try {
        const bm = Buffer.alloc(FILE_BLOCK)
        fs.readSync(fd, bm, 0, FILE_BLOCK, g0.bitmap * FILE_BLOCK)
        const saved = Buffer.from(bm)
        for (let b = a + 8; b < a + 16; b++) bm[b >> 3] |= 1 << (b & 7)
        fs.writeSync(fd, bm, 0, FILE_BLOCK, g0.bitmap * FILE_BLOCK)
        const after = await m.freeFileRuns()
        expect(total(after)).toBe(total(before) - 8)
        expect(after.some(([s, c]) => s + c === a + 8)).toBe(true)
        expect(after.some(([s]) => s === a + 16)).toBe(true)
        fs.writeSync(fd, saved, 0, FILE_BLOCK, g0.bitmap * FILE_BLOCK)
        expect(await m.freeFileRuns()).toEqual(before)
      } finally {
        fs.closeSync(fd)
      }
    })
  })

  it.each([
    ['mkfs.ext4 defaults (512 groups, most BLOCK_UNINIT)', []],
    ['1 KiB blocks, no uninit_bg (8192 groups, every bitmap read)', ['-b', '1024', '-N', '16384', '-O', '^metadata_csum,^uninit_bg']],
  ])('a 64 GiB file system, %s: done, and a 1 ms timer keeps firing throughout (no gap over 50 ms); yieldMs 0 yields after every group', async (_, args) => {
    const file = path.join(tmp, 'big.raw')
    execFileSync('truncate', ['-s', '64G', file])
    execFileSync('mkfs.ext4', ['-q', '-F', ...args, '-E', 'lazy_itable_init=1,lazy_journal_init=1', file], { stdio: 'ignore' })
    try {
      await withMap(file, async (m, ins) => {
        for (const yieldMs of [5, 0]) {
          let ticks = 0
          let gap = 0
          let last = performance.now()
          const timer = setInterval(() => {
            const now = performance.now()
            gap = Math.max(gap, now - last)
            last = now
            ticks++
          }, 1)
          const t0 = performance.now()
          const got = await m.freeFileRuns({ yieldMs })
          const ms = performance.now() - t0
          gap = Math.max(gap, performance.now() - last)
          clearInterval(timer)
          expect(gap, `longest gap ${gap.toFixed(1)} ms of ${ms.toFixed(1)} ms`).toBeLessThan(50)
          if (yieldMs === 0) expect(ticks).toBeGreaterThan(0)
          expect(got).toEqual(oracleRaw(file, ins))
          expect(total(got)).toBeGreaterThan((60 * 2 ** 30) / FILE_BLOCK)
        }
      })
    } finally {
      fs.rmSync(file, { force: true })
    }
  })
})

/** For every block of a raw image: the file-block runs bitmapCoverage must give for a write over it, from dumpe2fs's bitmap locations. */
function coverageOracle(file: string, ins: Inspection): Map<number, Runs> {
  const out = new Map<number, [number, number][]>()
  for (const { volume } of ins.filesystems) {
    const part = volume.start === 0 && volume.size === fs.statSync(file).size ? file : extract(file, volume.start, volume.size, path.join(tmp, `cov${volume.index}`))
    const d = dump(part)
    const bs = d.blockSize
    for (const g of d.groups) {
      const lo = volume.start + g.bitmap * bs
      for (let b = Math.floor(lo / FILE_BLOCK); b < Math.ceil((lo + bs) / FILE_BLOCK); b++) {
        const list = out.get(b) ?? []
        list.push([Math.floor((volume.start + g.first * bs) / FILE_BLOCK), Math.ceil((volume.start + (g.last + 1) * bs) / FILE_BLOCK)])
        out.set(b, list)
      }
    }
  }
  const runs = new Map<number, Runs>()
  for (const [b, spans] of out) {
    spans.sort((x, y) => x[0] - y[0])
    const r: Runs = []
    for (const [b0, b1] of spans) {
      const prev = r[r.length - 1]
      if (prev && b0 <= prev[0] + prev[1]) prev[1] = Math.max(prev[1], b1 - prev[0])
      else r.push([b0, b1 - b0])
    }
    runs.set(b, r)
  }
  return runs
}

describe('bitmapCoverage', () => {
  it.each([
    ['mbr.raw', ''],
    ['ext4, 1 KiB blocks, flex_bg (several groups\' bitmaps in one 4 KiB block)', 'flex1k'],
    ['ext4, 4 KiB blocks', 'flex4k'],
  ])('%s: every 4 KiB write gives the groups whose bitmaps it covers, as file blocks; a write over data none', async (_, made) => {
    const file = made === 'flex1k' ? makeFs(made, '300M', ['-t', 'ext4', '-b', '1024', '-G', '16']) : made === 'flex4k' ? makeFs(made, '1G', ['-t', 'ext4', '-b', '4096']) : path.join(dir, 'mbr.raw')
    await withMap(file, async (m, ins) => {
      const want = coverageOracle(file, ins)
      expect(want.size).toBeGreaterThan(1)
      const n = Math.ceil(fs.statSync(file).size / FILE_BLOCK)
      const wrong: string[] = []
      let shared = 0
      for (let b = 0; b < n; b++) {
        const got = m.bitmapCoverage(b * FILE_BLOCK, FILE_BLOCK)
        const w = want.get(b) ?? []
        if (JSON.stringify(got) !== JSON.stringify(w) && wrong.length < 5) wrong.push(`block ${b}: ${JSON.stringify(got)}, want ${JSON.stringify(w)}`)
        if (w.length && m.classOf(b) === BlockClass.Data) wrong.push(`block ${b} holds a bitmap but is data`)
      }
      expect(wrong).toEqual([])
      // Group 0's bitmap: group 0's blocks (1 KiB flex_bg: with the next groups' in the same 4 KiB).
      const d = dump(made ? file : extract(file, ins.filesystems[0].volume.start, ins.filesystems[0].volume.size, path.join(tmp, 'g0')))
      const start = ins.filesystems[0].volume.start
      const at = start + d.groups[0].bitmap * d.blockSize
      expect(m.bitmapCoverage(at, 1)).toEqual([[Math.floor((start + d.groups[0].first * d.blockSize) / FILE_BLOCK), Math.ceil((start + (d.groups[0].last + 1) * d.blockSize) / FILE_BLOCK) - Math.floor((start + d.groups[0].first * d.blockSize) / FILE_BLOCK)]])
      const b1 = Math.floor(at / FILE_BLOCK)
      const g0 = m.bitmapCoverage(b1 * FILE_BLOCK, FILE_BLOCK)
      expect(g0[0][0]).toBe(Math.floor((start + d.groups[0].first * d.blockSize) / FILE_BLOCK))
      const groupsIn = d.groups.filter((g) => Math.floor((start + g.bitmap * d.blockSize) / FILE_BLOCK) === Math.floor(at / FILE_BLOCK)).length
      if (made === 'flex1k') {
        shared = groupsIn
        expect(shared).toBeGreaterThan(1)
        expect(g0).toEqual([[0, Math.ceil(((shared * 8192 + 1) * 1024) / FILE_BLOCK)]])
      }
      // Unaligned: the fs blocks touched count; two blocks: the union of both answers.
      expect(m.bitmapCoverage(b1 * FILE_BLOCK + 1, FILE_BLOCK - 2)).toEqual(g0)
      const two = m.bitmapCoverage(b1 * FILE_BLOCK, 2 * FILE_BLOCK)
      const next = m.bitmapCoverage((b1 + 1) * FILE_BLOCK, FILE_BLOCK)
      expect(total(two)).toBeGreaterThanOrEqual(Math.max(total(g0), total(next)))
      for (const [s, c] of [...g0, ...next]) expect(two.some(([x, y]) => x <= s && s + c <= x + y)).toBe(true)
      // Data: none.
      const data = [...Array(n).keys()].filter((b) => m.classOf(b) === BlockClass.Data).slice(-50)
      expect(data.length).toBe(50)
      for (const b of data) expect(m.bitmapCoverage(b * FILE_BLOCK, FILE_BLOCK)).toEqual([])
      expect(m.bitmapCoverage(at, 0)).toEqual([])
    })
  })

  it('qcow2: a write over a bitmap block gives the raw image\'s groups where the qcow2 stores them', async () => {
    await withMap(path.join(dir, 'mbr-v3.qcow2'), async (q, ins) => {
      await withMap(path.join(dir, 'mbr.raw'), async (raw) => {
        let seen = 0
        for (let b = 0; b < Math.ceil(fs.statSync(path.join(dir, 'mbr-v3.qcow2')).size / FILE_BLOCK); b++) {
          const got = q.bitmapCoverage(b * FILE_BLOCK, FILE_BLOCK)
          const loc = ins.disk.locate(0, b * FILE_BLOCK)
          if (loc.kind !== 'guest') {
            expect(got).toEqual([])
            continue
          }
          const fromRaw = raw.bitmapCoverage(loc.guestOffset, FILE_BLOCK)
          expect(got.length > 0).toBe(fromRaw.length > 0)
          if (!got.length) continue
          seen++
          // Every qcow2 block named stores guest bytes of a raw block named.
          const rawSet = new Set<number>()
          for (const [s, c] of fromRaw) for (let k = s; k < s + c; k++) rawSet.add(k)
          for (const [s, c] of got) {
            for (let k = s; k < s + c; k++) {
              const l = ins.disk.locate(0, k * FILE_BLOCK)
              if (l.kind === 'guest') expect(rawSet.has(Math.floor(l.guestOffset / FILE_BLOCK)) || rawSet.has(Math.floor((l.guestOffset + FILE_BLOCK - 1) / FILE_BLOCK)), `qcow2 block ${k}`).toBe(true)
            }
          }
        }
        expect(seen).toBeGreaterThan(2)
      })
    })
  })
})
