// The ext classifier against e2fsprogs (test/helpers/e2oracle.ts) on every
// fixture of scripts/fixtures/ext.sh: every meta-data block of the oracle is
// meta-data with the same class in our map, and no other block is.
import { execFileSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BlockClass, className } from '../../src/introspect/classes'
import { scanExt } from '../../src/introspect/fs/ext'
import { ExtentMap } from '../../src/introspect/map/extent-map'
import { BufferReader, FileReader } from '../../src/introspect/reader'
import { ROOT } from '../helpers/cli'
import { e2oracle } from '../helpers/e2oracle'

const DIR = path.join(ROOT, '.cache', 'fixtures', 'ext')
let tmp = ''
beforeAll(() => {
  execFileSync('bash', [path.join(ROOT, 'scripts', 'fixtures', 'ext.sh')], { stdio: 'inherit' })
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-ext-'))
})
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

const FIXTURES = ['ext2-1024', 'ext2-2048', 'ext2-4096', 'ext3', 'ext4', 'ext4-meta_bg', 'ext4-sparse_super2', 'ext4-inline_data', 'ext4-mmp', 'ext4-nocsum', 'ext4-quota']

async function scanFile(file: string) {
  const r = await FileReader.open(file)
  try {
    return await scanExt(r)
  } finally {
    await r.close()
  }
}

describe.each(FIXTURES)('%s', (name) => {
  it('classifies every block exactly as dumpe2fs + debugfs do', async () => {
    const file = path.join(DIR, `${name}.img`)
    const oracle = e2oracle(file)
    const fs = await scanFile(file)
    expect(fs.info.blockSize).toBe(oracle.blockSize)
    expect(fs.info.blocksCount).toBe(oracle.blocksCount)
    const header = execFileSync('dumpe2fs', ['-h', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    expect([...fs.info.features].sort()).toEqual(/^Filesystem features:\s+(.*)$/m.exec(header)![1].trim().split(/\s+/).sort())
    expect(fs.info.uuid).toBe(/^Filesystem UUID:\s+(\S+)/m.exec(header)![1])
    expect(fs.info.inodesCount).toBe(Number(/^Inode count:\s+(\d+)/m.exec(header)![1]))
    expect(fs.stats.skipped.count).toBe(0)
    const wrong: string[] = []
    for (let b = 0; b < oracle.blocksCount; b++) {
      const want = oracle.classes.get(b) ?? 'data'
      const got = className(fs.classOf(b))
      if (want !== got && wrong.length < 10) wrong.push(`block ${b}: oracle ${want}, ours ${got}`)
    }
    expect(wrong).toEqual([])
    // Classes the fixture was built to contain really are there.
    const counts = fs.map.countByClass()
    if (name === 'ext3') expect(counts.get(BlockClass.Journal)).toBeGreaterThan(0)
    if (name.startsWith('ext2')) expect(counts.get(BlockClass.Indirect)).toBeGreaterThan(2)
    if (name === 'ext4') expect(counts.get(BlockClass.ExtentTree)).toBeGreaterThan(2)
    if (name === 'ext4-mmp') expect(counts.get(BlockClass.Mmp)).toBe(1)
    if (name === 'ext4-quota') {
      // Three quota files and the orphan file, two of them outside the reserved inodes.
      expect(fs.info.features).toEqual(expect.arrayContaining(['quota', 'project', 'orphan_file']))
      expect(counts.get(BlockClass.Special)).toBeGreaterThanOrEqual(4)
      const special = [...oracle.classes.values()].filter((c) => c === 'special').length
      expect(counts.get(BlockClass.Special)).toBe(special)
    }
    // Scanning reads meta-data only: never more than the meta-data there is (plus the superblock).
    const metaBytes = [...counts.values()].reduce((a, c) => a + c, 0) * oracle.blockSize
    expect(fs.stats.bytesRead).toBeLessThanOrEqual(metaBytes + 1024)
  })
})

describe.each(['ext2-1024', 'ext3', 'ext4', 'ext4-meta_bg', 'ext4-nocsum'])('free space of %s', (name) => {
  it('says which data blocks are free exactly as debugfs testb does, a block and a range at a time', async () => {
    const file = path.join(DIR, `${name}.img`)
    const r = await FileReader.open(file)
    try {
      const efs = await scanExt(r)
      const n = efs.info.blocksCount
      const first = efs.info.blockSize === 1024 ? 1 : 0
      // debugfs takes blocks from 1 (block 0 of a 4 KiB file system holds the superblock: in use).
      const out = execFileSync('debugfs', ['-R', `testb 1 ${n - 1}`, file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 64 << 20 })
      const used = new Set<number>([0])
      let lines = 0
      for (const m of out.matchAll(/^Block (\d+) (marked in use|not in use)$/gm)) {
        lines++
        if (m[2] === 'marked in use') used.add(Number(m[1]))
      }
      expect(lines).toBe(n - 1)
      let free = 0
      let inUse = 0
      const wrong: string[] = []
      // Every data-class block one at a time (meta-data is never asked: uninitialised groups say free).
      for (let b = first; b < n; b++) {
        if (efs.classOf(b) !== BlockClass.Data) continue
        const got = await efs.unallocated(b, 1)
        if (got) free++
        else inUse++
        if (got === used.has(b) && wrong.length < 5) wrong.push(`block ${b}: debugfs ${used.has(b) ? 'in use' : 'free'}, ours ${got ? 'free' : 'in use'}`)
      }
      expect(wrong).toEqual([])
      expect(free).toBeGreaterThan(100)
      expect(inUse).toBeGreaterThan(100)
      // Ranges of data blocks, across group boundaries: free only when every block is.
      const ranges = [0, 0]
      for (let b = first; b + 40 < n; b += 97) {
        if ([...Array(40).keys()].some((i) => efs.classOf(b + i) !== BlockClass.Data)) continue
        const want = [...Array(40).keys()].every((i) => !used.has(b + i))
        ranges[want ? 1 : 0]++
        expect(await efs.unallocated(b, 40), `${b}+40`).toBe(want)
      }
      expect(ranges[1]).toBeGreaterThan(0)
      // (the small fixtures have no 40 data blocks in a row with some in use)
      if (!['ext4-meta_bg', 'ext4-nocsum'].includes(name)) expect(ranges[0]).toBeGreaterThan(0)
      // Outside the file system, or before its first block: never free.
      expect(await efs.unallocated(n - 1, 2)).toBe(false)
      if (first) expect(await efs.unallocated(0, 1)).toBe(false)
    } finally {
      await r.close()
    }
  })
})

describe('objectsAt', () => {
  it('names the inode, file block and path of a data block and of a directory block, like debugfs icheck/ncheck', async () => {
    const file = path.join(DIR, 'ext2-4096.img')
    const fs = await (async () => {
      const r = await FileReader.open(file)
      const f = await scanExt(r)
      return { f, r }
    })()
    const stat = execFileSync('debugfs', ['-R', 'stat /d008/e01/f00008', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const block = Number(/\(0\):(\d+)/.exec(stat)![1])
    const [o] = await fs.f.objectsAt(block, 1)
    const icheck = execFileSync('debugfs', ['-R', `icheck ${block}`, file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    expect(o).toMatchObject({ fsBlock: block, class: BlockClass.Data, inode: Number(icheck.trim().split('\n').pop()!.split(/\s+/)[1]), logical: 0, path: '/d008/e01/f00008' })
    const dstat = execFileSync('debugfs', ['-R', 'stat /d001', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const dblock = Number(/\(0\):(\d+)/.exec(dstat)![1])
    const [d] = await fs.f.objectsAt(dblock, 1)
    expect(d).toMatchObject({ class: BlockClass.Directory, path: '/d001', logical: 0 })
    await fs.r.close()
  })
})

describe('objectsAt against debugfs icheck, ncheck and bmap', () => {
  // A sample of every inode-owned class (file data, directory, IND/DIND/TIND, extent-tree, xattr,
  // symlink, journal, special) from the oracle; one objectsAt call over the whole file system.
  it.each(['ext2-1024', 'ext4-mmp', 'ext3'])('%s', async (name) => {
    const file = path.join(DIR, `${name}.img`)
    const oracle = e2oracle(file)
    const byClass = new Map<string, number[]>()
    for (const [b, c] of [...oracle.classes].sort((x, y) => x[0] - y[0])) {
      if (!['data', 'directory', 'indirect', 'extent-tree', 'xattr', 'symlink', 'journal', 'special'].includes(c)) continue
      if (!byClass.has(c)) byClass.set(c, [])
      byClass.get(c)!.push(b)
    }
    const sample: number[] = []
    for (const blocks of byClass.values()) for (let k = 0; k < 20; k++) sample.push(blocks[Math.floor((k * blocks.length) / 20)])
    const uniq = [...new Set(sample)].sort((x, y) => x - y)
    expect(byClass.get('data')?.length).toBeGreaterThan(20)
    expect(byClass.get('directory')?.length).toBeGreaterThan(20)

    const r = await FileReader.open(file)
    const efs = await scanExt(r)
    const objs = await efs.objectsAt(0, oracle.blocksCount)
    const run = (cmds: string[]) => {
      const f = path.join(tmp, `cmds-${name}`)
      fs.writeFileSync(f, cmds.join('\n') + '\n')
      return execFileSync('debugfs', ['-f', f, file], { encoding: 'utf8', maxBuffer: 1 << 28, stdio: ['ignore', 'pipe', 'ignore'] })
    }
    const icheck = new Map<number, number>()
    for (const m of run([`icheck ${uniq.join(' ')}`]).matchAll(/^(\d+)\t(\d+)$/gm)) icheck.set(Number(m[1]), Number(m[2]))
    const inodes = [...new Set(uniq.map((b) => icheck.get(b)).filter((x): x is number => x !== undefined))]
    const ncheck = new Map<number, string[]>()
    for (const m of run([`ncheck ${inodes.join(' ')}`]).matchAll(/^(\d+)\t(.+)$/gm)) {
      const ino = Number(m[1])
      // debugfs ncheck prints entries of the root as "//name".
      ncheck.set(ino, [...(ncheck.get(ino) ?? []), m[2].replace(/^\/\/+/, '/')])
    }
    const withLogical = uniq.filter((b) => objs[b].logical !== undefined)
    const bmapOut = run(withLogical.map((b) => `bmap <${objs[b].inode}> ${objs[b].logical}`)).split(/^debugfs: bmap .*$/m).slice(1).map((x) => Number(x.trim()))
    const wrong: string[] = []
    for (const b of uniq) {
      const o = objs[b]
      const want = icheck.get(b)
      if (o.fsBlock !== b || o.inode !== want) wrong.push(`block ${b}: inode ${o.inode}, icheck ${want}`)
      const paths = want === undefined ? undefined : ncheck.get(want)
      if (paths ? !paths.includes(o.path ?? '') : o.path !== undefined && want !== 2) wrong.push(`block ${b}: path ${o.path}, ncheck ${paths}`)
      const leaf = ['data', 'directory', 'symlink', 'journal', 'special'].includes(oracle.classes.get(b)!)
      if (leaf !== (o.logical !== undefined)) wrong.push(`block ${b} (${oracle.classes.get(b)}): logical ${o.logical}`)
    }
    withLogical.forEach((b, k) => {
      if (bmapOut[k] !== b) wrong.push(`block ${b}: inode ${objs[b].inode} logical ${objs[b].logical}, bmap says ${bmapOut[k]}`)
    })
    expect(wrong.slice(0, 10)).toEqual([])
    expect(withLogical.length).toBeGreaterThan(40)
    await r.close()
  })
})

describe('update from captured writes', () => {
  it('a debugfs mkdir + file write + rm on a copy: feeding the changed blocks to update() gives the fresh scan of the copy', async () => {
    const src = path.join(DIR, 'ext2-1024.img')
    const before = path.join(tmp, 'before.img')
    const after = path.join(tmp, 'after.img')
    fs.copyFileSync(src, before)
    fs.copyFileSync(src, after)
    const big = path.join(tmp, 'payload')
    fs.writeFileSync(big, Buffer.alloc(600 * 1024, 7))
    const cmd = path.join(tmp, 'cmds')
    fs.writeFileSync(cmd, [`mkdir /newdir`, `write ${big} /newdir/payload`, `mkdir /newdir/sub`, `rm /d000/e00/f00000`, `rmdir /level00/level01/level02/level03/level04/level05/level06/level07/level08/level09/level10/level11/level12/level13/level14/level15/level16/level17/level18/level19/level20/level21/level22/level23/bottom`].join('\n') + '\n')
    execFileSync('debugfs', ['-w', '-f', cmd, after], { stdio: 'ignore' })
    const a = fs.readFileSync(before)
    const b = fs.readFileSync(after)
    const bs = 1024
    // The scan reads the file that will receive the writes; each block is applied after update() saw it.
    const live = Buffer.from(a)
    const reader = new BufferReader(live, 'live')
    const efs = await scanExt(reader)
    // Inode-table blocks last, as a guest's writeback often orders them: data and mapping blocks first.
    const changed: number[] = []
    for (let k = 0; k < a.length / bs; k++) if (!a.subarray(k * bs, (k + 1) * bs).equals(b.subarray(k * bs, (k + 1) * bs))) changed.push(k)
    const itable = changed.filter((k) => efs.classOf(k) === BlockClass.InodeTable)
    const rest = changed.filter((k) => efs.classOf(k) !== BlockClass.InodeTable)
    for (const k of [...rest, ...itable]) {
      const nb = b.subarray(k * bs, (k + 1) * bs)
      await efs.update(k, Buffer.from(nb))
      nb.copy(live, k * bs)
    }
    const fresh = await scanExt(new BufferReader(b, 'after'))
    const diff: string[] = []
    for (let k = 0; k < a.length / bs; k++) {
      if (efs.classOf(k) !== fresh.classOf(k) && diff.length < 10) diff.push(`block ${k}: updated ${className(efs.classOf(k))}, fresh ${className(fresh.classOf(k))}`)
    }
    expect(diff).toEqual([])
    expect(changed.length).toBeGreaterThan(5)
  })
})

describe('update from captured writes, ext4 (extents), in any write order', () => {
  // One debugfs session on a copy: a new directory with a file of 60 fragments (an extent tree
  // block), a slow symlink and a subdirectory; a file with an xattr block removed; the deep
  // path's last directory removed. The changed blocks are fed to update() in four orders.
  const ORDERS = ['ascending', 'descending', 'inode tables last', 'inode tables first', 'contiguous runs as one write each', 'contiguous runs, last first'] as const
  let a: Buffer
  let b: Buffer
  beforeAll(() => {
    const src = path.join(DIR, 'ext4-mmp.img')
    const after = path.join(tmp, 'ext4-after.img')
    fs.copyFileSync(src, after)
    const frag = path.join(tmp, 'frag60')
    const fd = fs.openSync(frag, 'w')
    for (let i = 0; i < 60; i++) fs.writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, 2 * i * 4096)
    fs.closeSync(fd)
    const deep = '/' + Array.from({ length: 24 }, (_, i) => `level${String(i).padStart(2, '0')}`).join('/')
    const cmd = path.join(tmp, 'ext4-cmds')
    fs.writeFileSync(
      cmd,
      [`mkdir /newdir`, `write ${frag} /newdir/frag`, `symlink /newdir/longlink /${'t'.repeat(120)}`, `mkdir /newdir/sub`, `rm /d000/e00/f00000`, `rm ${deep}/bottom`, `rmdir ${deep}`].join('\n') + '\n',
    )
    execFileSync('debugfs', ['-w', '-f', cmd, after], { stdio: 'ignore' })
    const stat = execFileSync('debugfs', ['-R', 'stat /newdir/frag', after], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    expect(stat).toMatch(/\(ETB0\):\d+/)
    a = fs.readFileSync(src)
    b = fs.readFileSync(after)
  })

  it.each(ORDERS)('%s: the map equals a fresh scan of the result, and the reported changes replay to it', async (order) => {
    const live = Buffer.from(a)
    const efs = await scanExt(new BufferReader(live, 'live'))
    const bs = efs.info.blockSize
    const start = ExtentMap.fromRuns([...efs.map.runs()])
    let changed: number[] = []
    for (let k = 0; k < a.length / bs; k++) if (!a.subarray(k * bs, (k + 1) * bs).equals(b.subarray(k * bs, (k + 1) * bs))) changed.push(k)
    const isTable = (k: number) => efs.classOf(k) === BlockClass.InodeTable
    if (order === 'descending') changed.reverse()
    if (order === 'inode tables last') changed = [...changed.filter((k) => !isTable(k)), ...changed.filter(isTable)]
    if (order === 'inode tables first') changed = [...changed.filter(isTable), ...changed.filter((k) => !isTable(k))]
    const replay = start
    const classesIn = (m: ExtentMap, s0: number, n: number): BlockClass[] => {
      const out: BlockClass[] = []
      let cur = s0
      for (const [s1, c1, k1] of m.runsIn(s0, n)) {
        if (s1 > cur) out.push(BlockClass.Data)
        out.push(k1)
        cur = s1 + c1
      }
      if (cur < s0 + n) out.push(BlockClass.Data)
      return out
    }
    // Writes: one block each, or each run of contiguous changed blocks as one write.
    let writes: Array<[number, number]> = changed.map((k) => [k, 1])
    if (order.startsWith('contiguous')) {
      writes = []
      for (const k of [...changed].sort((x, y) => x - y)) {
        const last = writes[writes.length - 1]
        if (last && last[0] + last[1] === k) last[1]++
        else writes.push([k, 1])
      }
      expect(writes.some(([, n]) => n > 1)).toBe(true)
      if (order.endsWith('last first')) writes.reverse()
    }
    let reported = 0
    for (const [k, n] of writes) {
      const nb = Buffer.from(b.subarray(k * bs, (k + n) * bs))
      for (const c of await efs.update(k, nb)) {
        expect(c.from).not.toBe(c.to)
        expect(classesIn(replay, c.fsBlock, c.count)).toEqual([c.from])
        replay.set(c.fsBlock, c.count, c.to)
        reported++
      }
      nb.copy(live, k * bs)
    }
    expect(reported).toBeGreaterThan(3)
    const fresh = await scanExt(new BufferReader(b, 'after'))
    const diff: string[] = []
    const replayDiff: string[] = []
    for (let k = 0; k < a.length / bs; k++) {
      if (efs.classOf(k) !== fresh.classOf(k) && diff.length < 10) diff.push(`block ${k}: updated ${className(efs.classOf(k))}, fresh ${className(fresh.classOf(k))}`)
      if (replay.classOf(k) !== efs.classOf(k) && replayDiff.length < 10) replayDiff.push(`block ${k}: replayed ${className(replay.classOf(k))}, map ${className(efs.classOf(k))}`)
    }
    expect(diff).toEqual([])
    expect(replayDiff).toEqual([])
    // The edits really moved classes: a new extent-tree block, directory and symlink blocks; a removed xattr block.
    const count = (m: ExtentMap, c: BlockClass) => m.countByClass().get(c) ?? 0
    const initial = (await scanExt(new BufferReader(a, 'before'))).map
    expect(count(efs.map, BlockClass.ExtentTree)).toBe(count(initial, BlockClass.ExtentTree) + 1)
    expect(count(efs.map, BlockClass.Directory)).toBeGreaterThan(count(initial, BlockClass.Directory))
    expect(count(efs.map, BlockClass.Symlink)).toBe(count(initial, BlockClass.Symlink) + 1)
    expect(count(efs.map, BlockClass.Xattr)).toBe(count(initial, BlockClass.Xattr) - 1)
  })
})

describe('hostile input', () => {
  function patched(name: string, patch: (b: Buffer) => void): Buffer {
    const b = fs.readFileSync(path.join(DIR, `${name}.img`))
    patch(b)
    return b
  }

  it('bad magic is not this format; absurd fields are CorruptError naming the superblock at 1024; bigalloc is unsupported', async () => {
    await expect(scanExt(new BufferReader(patched('ext2-1024', (b) => b.writeUInt16LE(0x1234, 1024 + 0x38))))).rejects.toMatchObject({ code: 'NOT_THIS_FORMAT' })
    await expect(scanExt(new BufferReader(patched('ext2-1024', (b) => b.writeUInt32LE(40, 1024 + 0x18)), 'img'))).rejects.toMatchObject({
      code: 'CORRUPT',
      message: 'img ext4 superblock @1024: s_log_block_size 40 gives blocks over 64 KiB',
    })
    await expect(scanExt(new BufferReader(patched('ext2-1024', (b) => b.writeUInt32LE(0x7fffffff, 1024 + 0x4)), 'img'))).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringMatching(/s_blocks_count 2147483647 x 1024 bytes exceeds/),
    })
    await expect(scanFile(path.join(DIR, 'ext4-bigalloc.img'))).rejects.toMatchObject({ code: 'UNSUPPORTED' })
  })

  it('a directory extent that runs into an inode table leaves the table alone (counted skip)', async () => {
    const file = path.join(DIR, 'ext4-mmp.img')
    const dump = execFileSync('dumpe2fs', [file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const t0 = Number(/Inode table at (\d+)-/.exec(dump)![1])
    const isize = Number(/^Inode size:\s+(\d+)/m.exec(dump)![1])
    const img = patched('ext4-mmp', (b) => {
      const root = t0 * 1024 + 1 * isize // inode 2
      expect(b.readUInt16LE(root + 0x28)).toBe(0xf30a)
      b.writeUInt16LE(3, root + 0x28 + 12 + 4) // ee_len
      b.writeUInt32LE(t0 - 1, root + 0x28 + 12 + 8) // ee_start_lo: one block before the table
    })
    const efs = await scanExt(new BufferReader(img, 'overlap'))
    expect([efs.classOf(t0), efs.classOf(t0 + 1), efs.classOf(t0 + 2)]).toEqual([BlockClass.InodeTable, BlockClass.InodeTable, BlockClass.InodeTable])
    expect(efs.stats.skipped.reasons.join('\n')).toMatch(new RegExp(`block ${t0} \\(\\+2\\) is the file system's own InodeTable, claimed as Directory`))
  })

  it('an extent tree that points to itself and block numbers past the end are counted skips, no hang', async () => {
    const file = path.join(DIR, 'ext4.img')
    const stat = execFileSync('debugfs', ['-R', 'stat /frag', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const etb0 = Number(/\(ETB0\):(\d+)/.exec(stat)![1])
    const img = patched('ext4', (b) => {
      // ETB0 is an index node: point its first entry's child at itself.
      const o = etb0 * 4096
      b.writeUInt32LE(etb0, o + 12 + 4)
      b.writeUInt16LE(0, o + 12 + 8)
      // And a directory's first block pointer far past the end: root's extent start.
    })
    const efs = await scanExt(new BufferReader(img, 'loop'))
    expect(efs.stats.skipped.count).toBeGreaterThan(0)
    expect(efs.stats.skipped.reasons.join('\n')).toMatch(/referenced twice|depth/)
    const ino = 2
    const past = patched('ext2-1024', (b) => {
      // Root directory inode (2): in the first inode table; set i_block[0] past the end.
      const dump = execFileSync('dumpe2fs', [path.join(DIR, 'ext2-1024.img')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      const table = Number(/Inode table at (\d+)/.exec(dump)![1])
      const isize = Number(/^Inode size:\s+(\d+)/m.exec(dump)![1])
      b.writeUInt32LE(0x7ffffff0, table * 1024 + (ino - 1) * isize + 0x28)
    })
    const e2 = await scanExt(new BufferReader(past, 'past'))
    expect(e2.stats.skipped.reasons.join('\n')).toMatch(/inode 2: data blocks 2147483632\+1 are outside the file system/)
  })
})

describe('update from the journal', () => {
  it('jbd2 descriptor blocks a real kernel wrote classify new meta-data before any checkpoint write is seen', async () => {
    const src = path.join(DIR, 'ext4.img')
    const img = path.join(tmp, 'journaled.img')
    fs.copyFileSync(src, img)
    const mnt = path.join(tmp, 'mnt')
    fs.mkdirSync(mnt, { recursive: true })
    execFileSync('mount', ['-o', 'loop', img, mnt])
    try {
      fs.mkdirSync(path.join(mnt, 'jdir'))
      for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(mnt, 'jdir', `a-file-with-a-long-name-${i}`), '')
      execFileSync('sync')
    } finally {
      execFileSync('umount', [mnt])
    }
    const a = fs.readFileSync(src)
    const b = fs.readFileSync(img)
    const efs = await scanExt(new BufferReader(Buffer.from(a), 'live'))
    const bs = efs.info.blockSize
    // Feed only the journal's blocks, in log order (the journal inode's blocks are contiguous here).
    const jstat = execFileSync('debugfs', ['-R', 'stat <8>', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const [, j0, j1] = /\(0-\d+\):(\d+)-(\d+)/.exec(jstat)!.map(Number)
    let fed = 0
    for (let k = j0; k <= j1; k++) {
      const nb = b.subarray(k * bs, (k + 1) * bs)
      if (nb.equals(a.subarray(k * bs, (k + 1) * bs))) continue
      await efs.update(k, Buffer.from(nb))
      fed++
    }
    expect(fed).toBeGreaterThan(2)
    const dstat = execFileSync('debugfs', ['-R', 'stat /jdir', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const dirBlocks = [...dstat.matchAll(/\(\d+(?:-\d+)?\):(\d+)(?:-(\d+))?/g)].flatMap((m) => {
      const out: number[] = []
      for (let x = Number(m[1]); x <= Number(m[2] ?? m[1]); x++) out.push(x)
      return out
    })
    expect(dirBlocks.length).toBeGreaterThan(1)
    for (const d of dirBlocks) expect({ d, cls: className(efs.classOf(d)) }).toEqual({ d, cls: 'directory' })
  })

  it('a directory entry with rec_len 0 is skipped when paths are resolved, no hang', async () => {
    const file = path.join(DIR, 'ext2-4096.img')
    const dstat = execFileSync('debugfs', ['-R', 'stat /d008', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const dblock = Number(/\(0\):(\d+)/.exec(dstat)![1])
    const fstat = execFileSync('debugfs', ['-R', 'stat /d008/e01/f00008', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const fblock = Number(/\(0\):(\d+)/.exec(fstat)![1])
    const buf = fs.readFileSync(file)
    buf.writeUInt16LE(0, dblock * 4096 + 4) // '.' of /d008: rec_len 0
    const efs = await scanExt(new BufferReader(buf, 'rec0'))
    const [o] = await efs.objectsAt(fblock, 1)
    expect(o.inode).toBeGreaterThan(0)
    expect(o.path ?? '').toBe('') // its parent directory no longer names it
    expect(efs.stats.skipped.count).toBe(1)
    const dirIno = Number(/^Inode: (\d+)/.exec(dstat)![1])
    expect(efs.stats.skipped.reasons).toEqual([`directory inode ${dirIno}: block ${dblock}: rec_len 0 at byte 0`])
  })
})

describe('update: descriptors, and the file system\'s own structures', () => {
  const dumpOf = (file: string) => execFileSync('dumpe2fs', [file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })

  it('a descriptor that moves a group\'s bitmaps and inode table moves their classes', async () => {
    const file = path.join(DIR, 'ext2-1024.img')
    const dump = dumpOf(file)
    const g1 = dump.split(/^Group 1: /m)[1]
    const bb = Number(/Block bitmap at (\d+)/.exec(g1)![1])
    const ib = Number(/Inode bitmap at (\d+)/.exec(g1)![1])
    const [, t0, t1] = /Inode table at (\d+)-(\d+)/.exec(g1)!.map(Number)
    const free = Number(/Free blocks: (\d+)-/.exec(g1)![1]) + 8
    const img = fs.readFileSync(file)
    const efs = await scanExt(new BufferReader(img, 'moved'))
    const gd = Buffer.from(img.subarray(2 * 1024, 3 * 1024)) // primary descriptors; group 1 at byte 32
    gd.writeUInt32LE(free, 32)
    gd.writeUInt32LE(free + 1, 36)
    gd.writeUInt32LE(free + 2, 40)
    const n = t1 - t0 + 1
    const changes = (await efs.update(2, gd)).sort((a, b) => a.fsBlock - b.fsBlock)
    expect(changes).toEqual([
      { fsBlock: bb, count: 1, from: BlockClass.BlockBitmap, to: BlockClass.Data },
      { fsBlock: ib, count: 1, from: BlockClass.InodeBitmap, to: BlockClass.Data },
      { fsBlock: t0, count: n, from: BlockClass.InodeTable, to: BlockClass.Data },
      { fsBlock: free, count: 1, from: BlockClass.Data, to: BlockClass.BlockBitmap },
      { fsBlock: free + 1, count: 1, from: BlockClass.Data, to: BlockClass.InodeBitmap },
      { fsBlock: free + 2, count: n, from: BlockClass.Data, to: BlockClass.InodeTable },
    ])
    // A backup copy of the descriptors changes nothing.
    expect(await efs.update(8194, Buffer.from(img.subarray(2 * 1024, 3 * 1024)))).toEqual([])
  })

  it('an inode (old garbage in an unused slot, or a corrupt new one) never takes a bitmap or an inode table with it', async () => {
    const file = path.join(DIR, 'ext4-mmp.img')
    const dump = dumpOf(file)
    const ipg = Number(/^Inodes per group:\s+(\d+)/m.exec(dump)![1])
    const isize = Number(/^Inode size:\s+(\d+)/m.exec(dump)![1])
    const bs = Number(/^Block size:\s+(\d+)/m.exec(dump)![1])
    const groups = dump.split(/^Group \d+: /m).slice(1)
    const tables = groups.map((g) => Number(/Inode table at (\d+)-/.exec(g)![1]))
    const g0 = groups[0]
    const bb = Number(/Block bitmap at (\d+)/.exec(g0)![1])
    const ib = Number(/Inode bitmap at (\d+)/.exec(g0)![1])
    const g = groups.findIndex((x) => Number(/(\d+) unused inodes/.exec(x)?.[1] ?? 0) > 0)
    expect(g).toBeGreaterThanOrEqual(0)
    const img = fs.readFileSync(file)
    const at = (ino: number) => tables[Math.floor((ino - 1) / ipg)] * bs + ((ino - 1) % ipg) * isize
    // Garbage in the group's last (unused, unread) slot: a regular file whose xattr block is a block
    // bitmap, first block an inode bitmap and IND block the first inode-table block.
    const junk = at((g + 1) * ipg)
    img.writeUInt16LE(0x81a4, junk)
    img.writeUInt16LE(1, junk + 0x1a)
    img.writeUInt32LE(ib, junk + 0x28)
    img.writeUInt32LE(tables[0], junk + 0x28 + 12 * 4)
    img.writeUInt32LE(bb, junk + 0x68)
    const efs = await scanExt(new BufferReader(img, 'junk'))
    expect(efs.stats.skipped.count).toBe(0)
    const blk = Math.floor(junk / bs)
    const clean = Buffer.from(img.subarray(blk * bs, (blk + 1) * bs))
    clean.fill(0, junk % bs, (junk % bs) + isize)
    expect(await efs.update(blk, clean)).toEqual([])
    for (const [b, c] of [[bb, BlockClass.BlockBitmap], [ib, BlockClass.InodeBitmap], [tables[0], BlockClass.InodeTable]] as const) expect(efs.classOf(b)).toBe(c)

    // A corrupt new inode: a file's xattr block pointed at the block bitmap.
    const stat = execFileSync('debugfs', ['-R', 'stat /d000/e00/f00000', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const ino = Number(/^Inode: (\d+)/.exec(stat)![1])
    const acl = Number(/File ACL: (\d+)/.exec(stat)![1])
    const iblk = Math.floor(at(ino) / bs)
    const nb = Buffer.from(img.subarray(iblk * bs, (iblk + 1) * bs))
    nb.writeUInt32LE(bb, (at(ino) % bs) + 0x68)
    expect(await efs.update(iblk, nb)).toEqual([{ fsBlock: acl, count: 1, from: BlockClass.Xattr, to: BlockClass.Data }])
    expect(efs.classOf(bb)).toBe(BlockClass.BlockBitmap)
    expect(efs.stats.skipped.reasons.join('\n')).toMatch(new RegExp(`inode ${ino}: block ${bb} \\(\\+1\\) is the file system's own BlockBitmap`))
  })
})

describe('update with a shared xattr block', () => {
  it('the block stays xattr until the last inode that refers to it lets go', async () => {
    const file = path.join(DIR, 'ext4-mmp.img')
    const img = fs.readFileSync(file)
    const dump = execFileSync('dumpe2fs', [file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const ipg = Number(/^Inodes per group:\s+(\d+)/m.exec(dump)![1])
    const isize = Number(/^Inode size:\s+(\d+)/m.exec(dump)![1])
    const bs = Number(/^Block size:\s+(\d+)/m.exec(dump)![1])
    const tables = [...dump.matchAll(/Inode table at (\d+)-/g)].map((m) => Number(m[1]))
    const statOf = (p: string) => execFileSync('debugfs', ['-R', `stat ${p}`, file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const inoA = Number(/^Inode: (\d+)/.exec(statOf('/d000/e00/f00000'))![1])
    const inoB = Number(/^Inode: (\d+)/.exec(statOf('/d050/e01/f00050'))![1])
    const aclA = Number(/File ACL: (\d+)/.exec(statOf('/d000/e00/f00000'))![1])
    const aclB = Number(/File ACL: (\d+)/.exec(statOf('/d050/e01/f00050'))![1])
    expect(aclA).toBeGreaterThan(0)
    expect(aclB).toBeGreaterThan(0)
    const inodeAt = (ino: number) => tables[Math.floor((ino - 1) / ipg)] * bs + ((ino - 1) % ipg) * isize
    // B shares A's block (as the kernel shares identical xattr blocks): refcount 2, B's own block unreferenced.
    img.writeUInt32LE(aclA, inodeAt(inoB) + 0x68)
    img.writeUInt32LE(2, aclA * bs + 4)
    const efs = await scanExt(new BufferReader(img, 'shared'))
    expect(efs.classOf(aclA)).toBe(BlockClass.Xattr)
    expect(efs.classOf(aclB)).toBe(BlockClass.Data)
    const dropAcl = async (ino: number) => {
      const off = inodeAt(ino)
      const blk = Math.floor(off / bs)
      const nb = Buffer.from(img.subarray(blk * bs, (blk + 1) * bs))
      nb.writeUInt32LE(0, (off % bs) + 0x68)
      const changes = await efs.update(blk, nb)
      nb.copy(img, blk * bs)
      return changes
    }
    expect(await dropAcl(inoA)).toEqual([])
    expect(efs.classOf(aclA)).toBe(BlockClass.Xattr)
    expect(await dropAcl(inoB)).toEqual([{ fsBlock: aclA, count: 1, from: BlockClass.Xattr, to: BlockClass.Data }])
  })
})

describe('update from jbd2 descriptor blocks (synthetic, every tag format)', () => {
  // On the ext3 fixture (1 KiB blocks, journal inode 8 mapped through IND blocks): a descriptor
  // block written to the journal names five home blocks; the journaled copies that follow it
  // are a directory block, an extent node, a list of block numbers, a copy of an inode-table
  // block and random bytes. The first three homes are free blocks and take the class their
  // copy shows; the inode-table home keeps its class; the random one stays data.
  const JBD2_MAGIC = 0xc03b3998
  const FORMATS = [
    { name: 'no checksum, 32-bit (8-byte tags)', incompat: 0 },
    { name: 'csum v2, 32-bit (10-byte tags)', incompat: 0x8 },
    { name: 'csum v2, 64-bit (14-byte tags)', incompat: 0x8 | 0x2 },
    { name: '64-bit (12-byte tags)', incompat: 0x2 },
    { name: 'csum v3, 64-bit (16-byte tags)', incompat: 0x10 | 0x2 },
    { name: 'csum v3, 32-bit (16-byte tags)', incompat: 0x10 },
  ]

  function tag(incompat: number, home: number, flags: number): Buffer {
    const v3 = (incompat & 0x10) !== 0
    const size = v3 ? 16 : 12 + (incompat & 0x8 ? 2 : 0) - (incompat & 0x2 ? 0 : 4)
    const t = Buffer.alloc(size)
    t.writeUInt32BE(home % 2 ** 32, 0)
    if (v3) {
      t.writeUInt32BE(flags, 4)
      t.writeUInt32BE(Math.floor(home / 2 ** 32), 8)
    } else {
      t.writeUInt16BE(flags, 6)
      if (incompat & 0x2) t.writeUInt32BE(Math.floor(home / 2 ** 32), 8)
    }
    return t
  }

  it.each(FORMATS)('$name', async ({ incompat }) => {
    const file = path.join(DIR, 'ext3.img')
    const img = fs.readFileSync(file)
    const efs = await scanExt(new BufferReader(img, 'ext3'))
    const bs = efs.info.blockSize
    const jstat = execFileSync('debugfs', ['-R', 'stat <8>', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const [, l0, l1, p0] = /\((\d+)-(\d+)\):(\d+)-\d+/.exec(jstat)!.map(Number)
    expect([l0, l1]).toEqual([0, 11])
    const dump = execFileSync('dumpe2fs', [file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const free = Number(/Free blocks: (\d+)-\d+/.exec(dump)![1]) + 10
    const table = Number(/Inode table at (\d+)/.exec(dump)![1])
    const homes = [free, free + 1, free + 2, table, free + 3]
    for (const h of [free, free + 1, free + 2, free + 3]) expect(efs.classOf(h)).toBe(BlockClass.Data)

    // The kernel rewrites the journal superblock at mount with the features that set the tag size.
    const jsb = Buffer.from(img.subarray(p0 * bs, (p0 + 1) * bs))
    expect(jsb.readUInt32BE(0)).toBe(JBD2_MAGIC)
    jsb.writeUInt32BE(4, 4) // v2 superblock
    jsb.writeUInt32BE(incompat, 0x28)
    expect(await efs.update(p0, jsb)).toEqual([])

    const desc = Buffer.alloc(bs)
    desc.writeUInt32BE(JBD2_MAGIC, 0)
    desc.writeUInt32BE(1, 4)
    desc.writeUInt32BE(7, 8)
    let o = 12
    homes.forEach((h, i) => {
      const t = tag(incompat, h, (i > 0 ? 0x2 : 0) | (i === homes.length - 1 ? 0x8 : 0))
      t.copy(desc, o)
      o += t.length
      if (i === 0) o += 16 // the journal uuid after the first tag
    })
    expect(await efs.update(p0 + 1, desc)).toEqual([])

    const dir = Buffer.alloc(bs)
    dir.writeUInt32BE(0, 0)
    dir.writeUInt32LE(2, 0)
    dir.writeUInt16LE(12, 4)
    dir.writeUInt8(1, 6)
    dir.write('.', 8)
    dir.writeUInt32LE(11, 12)
    dir.writeUInt16LE(bs - 12, 16)
    dir.writeUInt8(10, 18)
    dir.write('lost+found', 20)
    const etb = Buffer.alloc(bs)
    etb.writeUInt16LE(0xf30a, 0)
    etb.writeUInt16LE(1, 2)
    etb.writeUInt16LE((bs - 12) / 12, 4)
    etb.writeUInt32LE(free + 100, 12 + 8)
    etb.writeUInt16LE(4, 12 + 4)
    const ind = Buffer.alloc(bs)
    for (let k = 0; k < 40; k++) ind.writeUInt32LE(free + 200 + k, k * 4)
    const itable = Buffer.from(img.subarray(table * bs, (table + 1) * bs))
    const random = Buffer.alloc(bs)
    for (let k = 0; k < bs; k += 4) random.writeUInt32LE((0x9e3779b9 * (k + 1)) >>> 0, k)
    const changes = []
    for (const [k, copy] of [dir, etb, ind, itable, random].entries()) changes.push(...(await efs.update(p0 + 2 + k, copy)))
    expect(changes).toEqual([
      { fsBlock: free, count: 1, from: BlockClass.Data, to: BlockClass.Directory },
      { fsBlock: free + 1, count: 1, from: BlockClass.Data, to: BlockClass.ExtentTree },
      { fsBlock: free + 2, count: 1, from: BlockClass.Data, to: BlockClass.Indirect },
    ])
    expect(efs.classOf(table)).toBe(BlockClass.InodeTable)
    expect(efs.classOf(free + 3)).toBe(BlockClass.Data)
  })
})

describe('journals elsewhere, and progress', () => {
  it('a journal device is unsupported; a file system with an external journal is classified (no journal blocks of its own) and says so', async () => {
    const jdev = path.join(tmp, 'jdev.img')
    const img = path.join(tmp, 'extj.img')
    execFileSync('truncate', ['-s', '16M', jdev])
    execFileSync('truncate', ['-s', '64M', img])
    execFileSync('mke2fs', ['-q', '-F', '-O', 'journal_dev', '-b', '4096', jdev])
    await expect(scanFile(jdev)).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/external journal device/) })
    const loop = execFileSync('losetup', ['-f', '--show', jdev], { encoding: 'utf8' }).trim()
    try {
      execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-J', `device=${loop}`, img])
    } finally {
      execFileSync('losetup', ['-d', loop])
    }
    const efs = await scanFile(img)
    expect(efs.info.externalJournal).toBe(true)
    expect(efs.info.features).toContain('has_journal')
    expect(efs.map.countByClass().get(BlockClass.Journal)).toBeUndefined()
    const oracle = e2oracle(img)
    for (let b = 0; b < oracle.blocksCount; b++) expect({ b, c: className(efs.classOf(b)) }).toEqual({ b, c: oracle.classes.get(b) ?? 'data' })
  })

  it('reports progress up to the whole inode-table span it reads', async () => {
    const calls: [number, number][] = []
    const r = await FileReader.open(path.join(DIR, 'ext4.img'))
    await scanExt(r, { onProgress: (d, t) => calls.push([d, t]) })
    await r.close()
    expect(calls.length).toBeGreaterThan(0)
    const [done, total] = calls[calls.length - 1]
    expect(total).toBeGreaterThan(0)
    expect(done).toBe(total)
    for (let i = 1; i < calls.length; i++) expect(calls[i][0]).toBeGreaterThanOrEqual(calls[i - 1][0])
  })
})
