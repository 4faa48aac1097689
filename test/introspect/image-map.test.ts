// The image map (src/introspect/map/image-map.ts) on the container fixtures
// (scripts/fixtures/containers.sh): its classes are the fold's, and the fold
// and the per-block recomputation the live map uses agree on every block of
// every file (raw, MBR with a partition at sector 63, LVM, qcow2 with 64 KiB
// and 512-byte clusters, VMDK, VHD, VDI, a qcow2 chain's base files), by the
// one shared-block rule; applyWrite replayed from debugfs changes (raw and
// qcow2, guest writes made by qemu-io) gives a fresh scan's map and reports
// exactly what it changed; unallocated() against debugfs testb; preloadSkip()
// against dumpe2fs; the clean-unmount record byte for byte.
import { execFileSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ALL_CLASSES, BlockClass, className, sharedBlockClass, sharedBlockRank } from '../../src/introspect/classes'
import { inspectImage, type Inspection } from '../../src/introspect/inspect'
import { ExtentMap, type Run } from '../../src/introspect/map/extent-map'
import { FILE_BLOCK } from '../../src/introspect/map/fold'
import { fileBlockClass, ImageMap } from '../../src/introspect/map/image-map'
import { containerFixtures } from '../helpers/qemu'
import { replayImage } from '../helpers/replay'
import { rng } from '../helpers/rng'

let dir = ''
let tmp = ''
beforeAll(() => {
  dir = containerFixtures()
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-imap-'))
})
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

const SECTOR = 512
/** mbr.raw's partitions (containers.sh): ext2 at the old sector 63 (1 KiB blocks), ext4, ext3 in a logical partition. */
const P1 = { index: 1, start: 63, sectors: 20417 }
const P2 = { index: 2, start: 22528, sectors: 24576 }
const P7 = { index: 7, start: 79872, sectors: 40960 }

async function withMap<T>(file: string, f: (m: ImageMap, ins: Inspection) => Promise<T>): Promise<T> {
  const ins = await inspectImage(file)
  const m = ImageMap.fromInspection(ins, file)
  try {
    return await f(m, ins)
  } finally {
    await m.close()
  }
}

const blocksOf = (file: string) => Math.ceil(fs.statSync(file).size / FILE_BLOCK)

function extract(image: string, p: { start: number; sectors: number }, out: string): string {
  execFileSync('dd', [`if=${image}`, `of=${out}`, `bs=${SECTOR}`, `skip=${p.start}`, `count=${p.sectors}`, 'status=none'])
  return out
}

describe.each([
  'mbr.raw',
  'gpt.raw',
  'lvm.raw',
  'mbr-lvm.raw',
  'mbr-v3.qcow2',
  'mbr-v3-c512.qcow2',
  'mbr-monolithicSparse.vmdk',
  'mbr-dynamic.vhd',
  'mbr-dynamic.vdi',
  'mbr-delta2.qcow2',
])('%s', (name) => {
  it('classOf is the fold map of the image file; the fold and the per-block rule agree on every block of every file of the chain', async () => {
    const file = path.join(dir, name)
    await withMap(file, async (m, ins) => {
      expect(m.scanned).toBe(true)
      expect(m.inspection).toBe(ins)
      const folded = ins.fileMaps!.find((x) => x.path === file)!.map
      const wrong: string[] = []
      for (let b = 0; b < blocksOf(file); b++) {
        if (m.classOf(b) !== folded.classOf(b) && wrong.length < 10) wrong.push(`block ${b}: image map ${className(m.classOf(b))}, fold ${className(folded.classOf(b))}`)
      }
      expect(wrong).toEqual([])
      expect([...m.runs()]).toEqual([...folded.runs()])
      expect(m.countByClass()).toEqual(folded.countByClass())
      expect(m.serialize().equals(folded.serialize(FILE_BLOCK))).toBe(true)
      // The saved form gives the same classes, and knows nothing else.
      const saved = ImageMap.fromSaved(m.serialize())
      expect([...saved.runs()]).toEqual([...m.runs()])
      expect([saved.scanned, saved.inspection, saved.needsLearning(0, blocksOf(file)), await saved.applyWrite(0, Buffer.alloc(FILE_BLOCK)), await saved.unallocated(0, FILE_BLOCK)]).toEqual([false, null, false, [], false])
      let meta = 0
      for (const [cls, n] of m.countByClass()) if (cls !== BlockClass.SmallFile && cls !== BlockClass.BootFile) meta += n
      expect(meta).toBeGreaterThan(20)
      // Every file the fold maps (a chain's bases, a split disk's extents): byte by byte = the fold.
      for (const fm of ins.fileMaps!) {
        const bad: string[] = []
        for (let b = 0; b < blocksOf(fm.path); b++) {
          const c = fileBlockClass(ins, fm.path, b)
          if (c !== fm.map.classOf(b) && bad.length < 10) bad.push(`${path.basename(fm.path)} block ${b}: per block ${className(c)}, fold ${className(fm.map.classOf(b))}`)
        }
        expect(bad).toEqual([])
      }
      if (name === 'mbr-delta2.qcow2') expect(ins.fileMaps!.length).toBe(3)
    })
  })
})

describe('the shared-block rule', () => {
  it('is a total order: the higher placement rank, then the lower class number; data only when all is data', () => {
    for (const a of ALL_CLASSES) {
      expect(sharedBlockClass(a, BlockClass.Data)).toBe(a)
      for (const b of ALL_CLASSES) {
        expect(sharedBlockClass(a, b)).toBe(sharedBlockClass(b, a))
        if (a !== b) expect(sharedBlockRank(a)).not.toBe(sharedBlockRank(b))
      }
    }
    expect(sharedBlockClass(BlockClass.InodeTable, BlockClass.Superblock)).toBe(BlockClass.Superblock)
    expect(sharedBlockClass(BlockClass.Journal, BlockClass.InodeTable)).toBe(BlockClass.InodeTable)
    expect(sharedBlockClass(BlockClass.SmallFile, BlockClass.Journal)).toBe(BlockClass.Journal)
    expect(sharedBlockClass(BlockClass.Free, BlockClass.SmallFile)).toBe(BlockClass.SmallFile)
    // Equal priority: container meta-data before a partition table before a superblock before descriptors.
    expect(sharedBlockClass(BlockClass.Superblock, BlockClass.Container)).toBe(BlockClass.Container)
    expect(sharedBlockClass(BlockClass.PartitionTable, BlockClass.Superblock)).toBe(BlockClass.PartitionTable)
    expect(sharedBlockClass(BlockClass.GroupDescriptor, BlockClass.Superblock)).toBe(BlockClass.Superblock)
  })

  it('the fold (ExtentMap.fromRuns with it) gives each block the rule over the runs covering it, in any order', () => {
    const rnd = rng(0x5eed)
    for (let t = 0; t < 200; t++) {
      const runs: Run[] = []
      for (let k = 0; k < 12; k++) runs.push([Math.floor(rnd() * 60), 1 + Math.floor(rnd() * 12), ALL_CLASSES[Math.floor(rnd() * ALL_CLASSES.length)]])
      const want: BlockClass[] = []
      for (let b = 0; b < 80; b++) want.push(runs.filter(([s, c]) => b >= s && b < s + c).reduce<BlockClass>((best, r) => sharedBlockClass(best, r[2]), BlockClass.Data))
      for (const order of [runs, [...runs].reverse()]) {
        const m = ExtentMap.fromRuns(order, sharedBlockRank)
        expect([...Array(80).keys()].map((b) => m.classOf(b))).toEqual(want)
      }
    }
  })

  it('on shared blocks of real images: an ext2 superblock beside its descriptors at sector 63, a VHD block bitmap beside an EBR', async () => {
    // mbr.raw: partition 1 starts at byte 32256; its 1 KiB superblock (fs block 1) and descriptors (fs block 2) share file block 8.
    await withMap(path.join(dir, 'mbr.raw'), async (m, ins) => {
      const sb = P1.start * SECTOR + 1024
      expect(Math.floor(sb / FILE_BLOCK)).toBe(8)
      expect(Math.floor((sb + 1024) / FILE_BLOCK)).toBe(8)
      const efs = ins.filesystems.find((f) => f.volume.index === P1.index)!.fs
      expect([efs.classOf(1), efs.classOf(2)]).toEqual([BlockClass.Superblock, BlockClass.GroupDescriptor])
      expect(m.classOf(8)).toBe(BlockClass.Superblock)
    })
    // mbr-dynamic.vhd: a block's bitmap sector (container) precedes its data, so 4 KiB file blocks mix both.
    const vhd = path.join(dir, 'mbr-dynamic.vhd')
    await withMap(vhd, async (m, ins) => {
      const shared: number[] = []
      for (const r of ins.layout.regions) {
        const g = ins.disk.mapGuest(r.offset)
        if (g.kind !== 'data') continue
        const b = Math.floor(g.fileOffset / FILE_BLOCK)
        const lo = b * FILE_BLOCK
        if (ins.disk.regions().some((c) => c.file === 0 && c.offset < lo + FILE_BLOCK && lo < c.offset + c.length)) shared.push(b)
      }
      expect(shared.length).toBeGreaterThan(0)
      for (const b of shared) {
        expect(m.classOf(b)).toBe(BlockClass.Container)
        expect(fileBlockClass(ins, vhd, b)).toBe(BlockClass.Container)
      }
    })
  })
})

describe('applyWrite', () => {
  /** mbr.raw with debugfs changes in the ext2 at sector 63 and the ext3 in partition 7 (made once). */
  let changedRaw = ''
  function makeChangedRaw(): string {
    if (changedRaw) return changedRaw
    const out = path.join(tmp, 'mbr-changed.raw')
    fs.copyFileSync(path.join(dir, 'mbr.raw'), out)
    const payload = path.join(tmp, 'payload')
    fs.writeFileSync(payload, Buffer.from([...Array(90 * 1024).keys()].map((i) => (i * 7) & 0xff)))
    for (const p of [P1, P7]) {
      const part = extract(out, p, path.join(tmp, `part${p.index}`))
      const cmd = path.join(tmp, `cmds${p.index}`)
      fs.writeFileSync(cmd, [`mkdir /newdir`, `write ${payload} /newdir/payload`, `mkdir /newdir/sub`, `rm /f0002`, `rm /sub/f0001`, `symlink /newdir/link /${'long-target/'.repeat(10)}`].join('\n') + '\n')
      execFileSync('debugfs', ['-w', '-f', cmd, part], { stdio: 'ignore' })
      execFileSync('dd', [`if=${part}`, `of=${out}`, `bs=${SECTOR}`, `seek=${p.start}`, 'conv=notrunc', 'status=none'])
    }
    changedRaw = out
    return out
  }

  it('raw, ext2 at sector 63 (4 KiB writes over 1 KiB fs blocks, unaligned) and ext3: replayed writes give the fresh scan, and say what they changed', async () => {
    const after = makeChangedRaw()
    const live = path.join(tmp, 'live.raw')
    fs.copyFileSync(path.join(dir, 'mbr.raw'), live)
    const r = await replayImage(live, after)
    expect(r.wrong).toEqual([])
    expect(r.badChanges).toEqual([])
    expect(r.written).toBeGreaterThan(10)
    // The new directories, the payload's indirect blocks and the slow symlink were learnt; the indirect block of the
    // removed /sub/f0001 (32 KiB in 1 KiB blocks) went back to data.
    const to = new Set(r.changes.map((c) => c.to))
    for (const c of [BlockClass.Directory, BlockClass.Indirect, BlockClass.Symlink]) expect(to.has(c), className(c)).toBe(true)
    expect(r.changes.some((c) => c.from === BlockClass.Indirect && c.to === BlockClass.Data)).toBe(true)
  })

  it('qcow2: the same guest changes written by qemu-io (new clusters, L2 and refcount updates) replayed on the image file give the fresh scan', async () => {
    const changed = fs.readFileSync(makeChangedRaw())
    const base = fs.readFileSync(path.join(dir, 'mbr.raw'))
    const after = path.join(tmp, 'after.qcow2')
    fs.copyFileSync(path.join(dir, 'mbr-v3.qcow2'), after)
    const cmds: string[] = []
    for (let o = 0; o < base.length; ) {
      if (base.subarray(o, o + SECTOR).equals(changed.subarray(o, o + SECTOR))) {
        o += SECTOR
        continue
      }
      let e = o + SECTOR
      while (e < base.length && e - o < 65536 && !base.subarray(e, e + SECTOR).equals(changed.subarray(e, e + SECTOR))) e += SECTOR
      const pat = path.join(tmp, `w${cmds.length}`)
      fs.writeFileSync(pat, changed.subarray(o, e))
      cmds.push('-c', `write -s ${pat} ${o} ${e - o}`)
      o = e
    }
    expect(cmds.length).toBeGreaterThan(4)
    execFileSync('qemu-io', ['-f', 'qcow2', ...cmds, after], { stdio: 'ignore' })
    const conv = path.join(tmp, 'after-qcow2.raw')
    execFileSync('qemu-img', ['convert', '-O', 'raw', after, conv])
    expect(fs.readFileSync(conv).equals(changed)).toBe(true)
    const live = path.join(tmp, 'live.qcow2')
    fs.copyFileSync(path.join(dir, 'mbr-v3.qcow2'), live)
    const r = await replayImage(live, after)
    expect(r.wrong).toEqual([])
    expect(r.badChanges).toEqual([])
    expect(fs.statSync(after).size).toBeGreaterThan(fs.statSync(path.join(dir, 'mbr-v3.qcow2')).size)
    expect(r.changes.some((c) => c.to === BlockClass.Directory)).toBe(true)
  })

  it('needsLearning: a write touching meta-data, not one of data only; nothing without a scan', async () => {
    await withMap(path.join(dir, 'mbr.raw'), async (m) => {
      expect(m.needsLearning(8, 8)).toBe(true)
      let data = -1
      for (let b = 100; b < 24576 && data < 0; b++) if (m.classOf(b) === BlockClass.Data && m.classOf(b + 1) === BlockClass.Data) data = b
      expect(m.needsLearning(data, data + 1)).toBe(false)
      expect(m.needsLearning(data, 8 + 1 + data)).toBe(true)
      expect(ImageMap.empty().needsLearning(0, 100)).toBe(false)
    })
  })
})

/** Blocks of a partition's file system marked in use, from debugfs testb (block 0 is in use). */
function usedBlocks(part: string, blocks: number): Set<number> {
  const out = execFileSync('debugfs', ['-R', `testb 1 ${blocks - 1}`, part], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 64 << 20 })
  const used = new Set<number>([0])
  for (const m of out.matchAll(/^Block (\d+) marked in use$/gm)) used.add(Number(m[1]))
  return used
}

describe('unallocated', () => {
  it('raw: a 4 KiB block is new-data space exactly when every fs block under it is free in debugfs testb (ext2 at sector 63 and ext4)', async () => {
    const file = path.join(dir, 'mbr.raw')
    await withMap(file, async (m, ins) => {
      for (const p of [P1, P2]) {
        const efs = ins.filesystems.find((f) => f.volume.index === p.index)!.fs
        const bs = efs.blockSize
        const used = usedBlocks(extract(file, p, path.join(tmp, `testb${p.index}`)), efs.info.blocksCount)
        const start = p.start * SECTOR
        const end = start + p.sectors * SECTOR
        const first = efs.info.blockSize === 1024 ? 1 : 0
        const want = (pos: number, len: number) => {
          if (pos < start || pos + len > end) return false
          for (let f = Math.floor((pos - start) / bs); f < Math.ceil((pos + len - start) / bs); f++) if (f < first || f >= efs.info.blocksCount || used.has(f)) return false
          return true
        }
        let free = 0
        let inUse = 0
        const wrong: string[] = []
        for (let b = Math.floor(start / FILE_BLOCK); b < Math.ceil(end / FILE_BLOCK); b++) {
          if (m.classOf(b) !== BlockClass.Data) continue
          const got = await m.unallocated(b * FILE_BLOCK, FILE_BLOCK)
          if (got !== want(b * FILE_BLOCK, FILE_BLOCK) && wrong.length < 5) wrong.push(`partition ${p.index} block ${b}: ours ${got}`)
          if (got) free++
          else inUse++
        }
        expect(wrong).toEqual([])
        expect(free).toBeGreaterThan(100)
        expect(inUse).toBeGreaterThan(20)
        // Sub-block and multi-block ranges, unaligned.
        for (let pos = start + 5000; pos + 20000 < end; pos += 77777) {
          expect(await m.unallocated(pos, 20000), `${pos}+20000`).toBe(want(pos, 20000))
          expect(await m.unallocated(pos, 700), `${pos}+700`).toBe(want(pos, 700))
        }
      }
      // Across the end of a partition, the MBR, and nothing at all: never.
      expect(await m.unallocated(P1.start * SECTOR + P1.sectors * SECTOR - 1024, 4096)).toBe(false)
      expect(await m.unallocated(0, 512)).toBe(false)
      expect(await m.unallocated(4096, 0)).toBe(false)
    })
  })

  it('qcow2: the answer for a file block is the raw image\'s for the guest bytes it holds', async () => {
    const rawFile = path.join(dir, 'mbr.raw')
    const qfile = path.join(dir, 'mbr-v3.qcow2')
    await withMap(rawFile, async (raw) => {
      await withMap(qfile, async (q, ins) => {
        let free = 0
        let checked = 0
        for (let b = 0; b < blocksOf(qfile); b++) {
          const loc = ins.disk.locate(0, b * FILE_BLOCK)
          const got = await q.unallocated(b * FILE_BLOCK, FILE_BLOCK)
          if (loc.kind !== 'guest') {
            expect(got).toBe(false)
            continue
          }
          expect(loc.length).toBeGreaterThanOrEqual(FILE_BLOCK)
          expect(got, `block ${b}`).toBe(await raw.unallocated(loc.guestOffset, FILE_BLOCK))
          checked++
          if (got) free++
        }
        expect(checked).toBeGreaterThan(200)
        expect(free).toBeGreaterThan(0)
      })
    })
  })
})

describe('preloadSkip', () => {
  it('raw and LVM: exactly the 4 KiB blocks wholly inside inode-table space no inode uses yet, as dumpe2fs reports it', async () => {
    for (const [name, index] of [
      ['mbr.raw', P2.index],
      ['lvm.raw', 0],
    ] as const) {
      const file = path.join(dir, name)
      await withMap(file, async (m, ins) => {
        const hits = ins.filesystems.filter((f) => index === 0 || f.volume.index === index)
        expect(hits.length).toBe(1)
        const { volume, fs: efs } = hits[0]
        const part = path.join(tmp, `dump-${name}`)
        const image = fs.readFileSync(file)
        fs.writeFileSync(part, Buffer.concat(volume.segments.map((s) => image.subarray(s.diskOffset, s.diskOffset + s.length))))
        const dump = execFileSync('dumpe2fs', [part], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
        const isz = Number(/^Inode size:\s+(\d+)/m.exec(dump)![1])
        const ipg = Number(/^Inodes per group:\s+(\d+)/m.exec(dump)![1])
        const bs = efs.blockSize
        // Unused inode-table fs blocks per group: past ceil(used inodes * size / block size).
        const unusedFs: [number, number][] = []
        for (const g of dump.split(/^Group \d+:/m).slice(1)) {
          const [, a, z] = /Inode table at (\d+)-(\d+)/.exec(g)!
          const unused = /INODE_UNINIT/.test(g.split('\n')[0]) ? ipg : Number(/(\d+) unused inodes/.exec(g)![1])
          const usedBlocks = Math.ceil(((ipg - unused) * isz) / bs)
          if (Number(a) + usedBlocks <= Number(z)) unusedFs.push([Number(a) + usedBlocks, Number(z) + 1])
        }
        expect(unusedFs.length).toBeGreaterThan(0)
        // To file bytes by the volume's segments (a raw image: disk bytes are file bytes), merged, then whole 4 KiB blocks.
        const spans: [number, number][] = []
        for (const [lo, hi] of unusedFs) {
          for (const s of volume.segments) {
            const a = Math.max(lo * bs, s.volumeOffset)
            const z = Math.min(hi * bs, s.volumeOffset + s.length)
            if (z > a) spans.push([s.diskOffset + a - s.volumeOffset, s.diskOffset + z - s.volumeOffset])
          }
        }
        spans.sort((x, y) => x[0] - y[0])
        const want = new Set<number>()
        for (let i = 0; i < spans.length; ) {
          let [a, z] = spans[i++]
          while (i < spans.length && spans[i][0] <= z) z = Math.max(z, spans[i++][1])
          for (let b = Math.ceil(a / FILE_BLOCK); b < Math.floor(z / FILE_BLOCK); b++) want.add(b)
        }
        expect(want.size).toBeGreaterThan(10)
        const got = new Set<number>()
        for (let b = 0; b < blocksOf(file); b++) if (m.preloadSkip(b)) got.add(b)
        expect([...got].sort((x, y) => x - y)).toEqual([...want].sort((x, y) => x - y))
        for (const b of got) expect(m.classOf(b)).toBe(BlockClass.InodeTable)
      })
    }
    expect(ImageMap.empty().preloadSkip(0)).toBe(false)
  })
})

describe('clean-unmount record', () => {
  it('is u32 + JSON {mtimeNs, size, volumes} + each file system\'s state, byte for byte; it reads back and restores the same map', async () => {
    const file = path.join(dir, 'mbr.raw')
    const mtimeNs = 1_712_345_678_901_234_567n
    let rec: Buffer = Buffer.alloc(0)
    let runs: Run[] = []
    await withMap(file, async (m, ins) => {
      rec = m.cleanRecord(mtimeNs, 100_663_296)
      const head = Buffer.from('{"mtimeNs":"1712345678901234567","size":100663296,"volumes":[1,2,7]}')
      const parts = [head, ...ins.filesystems.map((f) => f.fs.exportState())]
      const want = Buffer.concat(parts.flatMap((p) => [Buffer.from(Uint32Array.of(p.length).buffer), p]))
      expect(rec.equals(want)).toBe(true)
      runs = [...m.runs()]
    })
    const back = ImageMap.parseCleanRecord(rec)!
    expect(back.mtimeNs).toBe(mtimeNs)
    expect(back.size).toBe(100_663_296)
    expect([...back.states.keys()]).toEqual([1, 2, 7])
    const ins = await inspectImage(file, { restore: back.states })
    const m = ImageMap.fromInspection(ins, file)
    expect(ins.restored).toEqual([1, 2, 7])
    expect([...m.runs()]).toEqual(runs)
    expect(m.cleanRecord(mtimeNs, 100_663_296).equals(rec)).toBe(true)
    await m.close()
    expect(ImageMap.parseCleanRecord(Buffer.from('not a record'))).toBeNull()
    expect(ImageMap.parseCleanRecord(rec.subarray(0, rec.length - 10))).toBeNull()
    expect(ImageMap.parseCleanRecord(ImageMap.empty().cleanRecord(5n, 6))).toEqual({ mtimeNs: 5n, size: 6, states: new Map() })
  })
})

describe('empty and saved maps', () => {
  it('empty: every block data; a saved map of another block size or damaged is refused', async () => {
    const e = ImageMap.empty()
    expect([e.classOf(0), e.classOf(1e9), [...e.runs()].length, e.scanned, e.inspection]).toEqual([BlockClass.Data, BlockClass.Data, 0, false, null])
    expect(await e.applyWrite(0, Buffer.alloc(4096, 1))).toEqual([])
    await e.close()
    const m = new ExtentMap()
    m.set(3, 2, BlockClass.InodeTable)
    expect(() => ImageMap.fromSaved(m.serialize(1024))).toThrow(/expected 4096-byte blocks, saw 1024/)
    const good = m.serialize(FILE_BLOCK)
    expect(ImageMap.fromSaved(good).classOf(4)).toBe(BlockClass.InodeTable)
    const bad = Buffer.from(good)
    bad[bad.length - 1] ^= 1
    expect(() => ImageMap.fromSaved(bad)).toThrow(/checksum/)
  })

  it('fromInspection refuses a file that is not the image\'s', async () => {
    const file = path.join(dir, 'mbr-v3.qcow2')
    const ins = await inspectImage(file)
    expect(() => ImageMap.fromInspection(ins, path.join(dir, 'mbr.raw'))).toThrow(/is not a file of the image/)
    await ins.close()
  })
})
