// Small files' data on the fast tiers (--small-files, default 32 KiB): the ext
// scan classes the data blocks of regular files up to the size small-file
// (checked against debugfs `blocks` and the files' real sizes), the live map
// follows files that are created, grow past the size, shrink and go away (a
// fresh scan of the result is the oracle), a saved state made with another
// size is not restored, and through a mount: the data of small files is
// preloaded into the SSD store, a guest reads it from there and not from the
// HDD, its writes to them are redirected and destaged, and the HDD file is a
// clean file system with every byte after unmount.
import { execFileSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BlockClass, className } from '../../src/introspect/classes'
import { CorruptError } from '../../src/introspect/errors'
import { ExtFs, scanExt } from '../../src/introspect/fs/ext'
import { FileReader } from '../../src/introspect/reader'
import { imageStats } from '../helpers/control'
import { replayChanges } from '../helpers/replay'
import { e2oracle } from '../helpers/e2oracle'
import { checkImageAlone, mount, testDirs, tmpdir, waitFor } from '../helpers/mount'
import { mulberry32 } from '../../src/store/hdd-model'

const LIMIT = 32 * 1024
let base = ''
beforeAll(() => {
  base = tmpdir('vmdi-small-')
})
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

/** A tree of files of many sizes around the limit, with a symlink, an empty file and a sparse one. */
function makeTree(root: string, seed: number): Map<string, number> {
  const rnd = mulberry32(seed)
  const sizes = new Map<string, number>()
  const fixed = [0, 1, 4095, 4096, 4097, 20_000, LIMIT - 1, LIMIT, LIMIT + 1, 100_000, 300_000]
  for (let d = 0; d < 6; d++) {
    const dir = path.join(root, `d${d}`)
    fs.mkdirSync(dir, { recursive: true })
    for (let f = 0; f < 25; f++) {
      const size = f < fixed.length ? fixed[f] : Math.floor(rnd() * 3 * LIMIT)
      const rel = path.join(`d${d}`, `f${f}`)
      const bytes = crypto.createHash('sha256').update(`${seed}/${rel}`).digest()
      const buf = Buffer.alloc(size)
      for (let k = 0; k < size; k += bytes.length) bytes.copy(buf, k)
      fs.writeFileSync(path.join(root, rel), buf)
      sizes.set(rel, size)
    }
  }
  fs.symlinkSync('d0/f5', path.join(root, 'link'))
  // Sparse: 24 KiB long, one block written at its end.
  const fd = fs.openSync(path.join(root, 'sparse'), 'w')
  fs.writeSync(fd, Buffer.alloc(100, 1), 0, 100, 24 * 1024 - 100)
  fs.closeSync(fd)
  sizes.set('sparse', 24 * 1024)
  return sizes
}

/** fs block → 'small-file' for every data block of a regular file of at most LIMIT bytes, from debugfs. */
function smallFileOracle(img: string, sizes: Map<string, number>): Map<number, string> {
  const cmds = path.join(base, `blocks-${path.basename(img)}.cmd`)
  const files = [...sizes.keys()]
  fs.writeFileSync(cmds, files.map((f) => `blocks /${f}`).join('\n') + '\n')
  const out = execFileSync('debugfs', ['-f', cmds, img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 1 << 26 })
  // debugfs echoes each command ("debugfs: blocks /x") before its output.
  const got = new Map<number, string>()
  let cur: string | null = null
  for (const line of out.split('\n')) {
    const m = /^debugfs: blocks \/(.*)$/.exec(line)
    if (m) {
      cur = m[1]
      continue
    }
    if (cur === null) continue
    const size = sizes.get(cur) ?? -1
    if (size <= 0 || size > LIMIT) continue
    for (const t of line.trim().split(/\s+/).filter(Boolean)) got.set(Number(t), 'small-file')
  }
  return got
}

function classDiff(got: (b: number) => BlockClass, want: (b: number) => string, count: number): string[] {
  const wrong: string[] = []
  for (let b = 0; b < count && wrong.length < 10; b++) {
    if (className(got(b)) !== want(b)) wrong.push(`block ${b}: oracle ${want(b)}, ours ${className(got(b))}`)
  }
  return wrong
}

describe('the ext scan with small files', () => {
  it('classes the data of regular files up to the size small-file, exactly as debugfs places it; meta-data as before; a state made with another size does not restore', async () => {
    for (const type of ['ext4', 'ext3'] as const) {
      const tree = path.join(base, `tree-${type}`)
      const sizes = makeTree(tree, 7)
      const img = path.join(base, `scan-${type}.img`)
      execFileSync('mke2fs', ['-q', '-t', type, '-b', '4096', '-d', tree, img, '64M'])
      const meta = e2oracle(img)
      const small = smallFileOracle(img, sizes)
      expect(small.size).toBeGreaterThan(100)
      const r = await FileReader.open(img)
      try {
        const efs = await scanExt(r, { smallFileBytes: LIMIT })
        expect(efs.stats.skipped.count).toBe(0)
        // The oracle names regular files' data blocks 'data': those of small files are small-file.
        const want = (b: number) => small.get(b) ?? meta.classes.get(b) ?? 'data'
        expect(classDiff((b) => efs.classOf(b), want, meta.blocksCount), type).toEqual([])
        // Small files' data is not counted as meta-data.
        const plain = await scanExt(r)
        expect(efs.stats.metadataBlocks).toBe(plain.stats.metadataBlocks)
        expect(efs.map.countByClass().get(BlockClass.SmallFile)).toBe(small.size)
        expect(plain.map.countByClass().get(BlockClass.SmallFile)).toBeUndefined()
        // A saved state carries its size: restored with the same, refused with another.
        const state = efs.exportState()
        const back = await ExtFs.restore(r, state, { smallFileBytes: LIMIT })
        expect(classDiff((b) => back.classOf(b), (b) => className(efs.classOf(b)), meta.blocksCount)).toEqual([])
        await expect(ExtFs.restore(r, state, { smallFileBytes: 0 })).rejects.toThrow(CorruptError)
        await expect(ExtFs.restore(r, plain.exportState(), { smallFileBytes: LIMIT })).rejects.toThrow(/small files up to 0 bytes, not 32768/)
      } finally {
        await r.close()
      }
    }
  })

  it('update(): files created small, grown past the size, truncated below it and removed: the map equals a fresh scan of the result', async () => {
    for (const type of ['ext4', 'ext3'] as const) {
      const tree = path.join(base, `upd-tree-${type}`)
      makeTree(tree, 11)
      const before = path.join(base, `upd-before-${type}.img`)
      const after = path.join(base, `upd-after-${type}.img`)
      execFileSync('mke2fs', ['-q', '-t', type, '-b', '4096', '-d', tree, before, '64M'])
      fs.copyFileSync(before, after)
      // The kernel's own ext driver makes the changes, on a loop mount of the copy.
      const mnt = path.join(base, `upd-mnt-${type}`)
      fs.mkdirSync(mnt, { recursive: true })
      execFileSync('mount', ['-o', 'loop', '-t', type, after, mnt])
      try {
        fs.appendFileSync(path.join(mnt, 'd0', 'f5'), Buffer.alloc(60_000, 3)) // 20,000 → 80,000 bytes: no longer small
        fs.truncateSync(path.join(mnt, 'd0', 'f9'), 10_000) // 100,000 → 10,000: small now
        fs.rmSync(path.join(mnt, 'd1'), { recursive: true })
        fs.mkdirSync(path.join(mnt, 'new'))
        for (let f = 0; f < 40; f++) fs.writeFileSync(path.join(mnt, 'new', `n${f}`), Buffer.alloc(1000 * (f + 1), f))
      } finally {
        execFileSync('umount', [mnt])
      }
      const { fresh, wrong } = await replayChanges(fs.readFileSync(before), fs.readFileSync(after), { smallFileBytes: LIMIT })
      expect(wrong, type).toEqual([])
      expect(fresh.map.countByClass().get(BlockClass.SmallFile)).toBeGreaterThan(50)
    }
  })
})

function sha(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex')
}

describe('a mount with small files on the fast tiers', () => {
  it('preloads their data into the SSD store, serves the guest\'s reads of them without the HDD, redirects and destages its writes; e2fsck clean and every byte after unmount', async () => {
    const { store, guest, tree, mnt } = testDirs(base, 'mount')
    const sizes = makeTree(tree, 23)
    const img = path.join(store, 'vm.img')
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', tree, img, '128M'])
    const small = smallFileOracle(img, sizes)
    const smallFiles = [...sizes].filter(([, s]) => s > 0 && s <= LIMIT).map(([f]) => f)
    // No background destage while the test looks (its tick would clean the redirected blocks at any moment).
    const m = await mount(store, mnt, [], { VMDI_DESTAGE_INTERVAL_MS: '600000' })
    let stopped = false
    try {
      const loop = execFileSync('losetup', ['--direct-io=on', '-f', '--show', path.join(m.mnt, 'vm.img')], { encoding: 'utf8' }).trim()
      try {
        await waitFor(() => imageStats(m.mnt)?.scan.warm === true, 30_000, 'the scan and preload')
        await waitFor(() => /small and boot files: \d+ data block\(s\)/.test(m.log()), 10_000, 'the small-file preload log line')
        const st0 = imageStats(m.mnt)!
        // The image is one ext4 at offset 0 with 4 KiB blocks: file blocks are fs blocks.
        expect(st0.mapClasses['small-file']).toBe(small.size)
        execFileSync('mount', ['-t', 'ext4', loop, guest])
        try {
          for (const f of smallFiles) expect(sha(path.join(guest, f)), f).toBe(sha(path.join(tree, f)))
          const st1 = imageStats(m.mnt)!
          const c = st1.classes['small-file']
          expect(c.reads).toBeGreaterThanOrEqual(small.size)
          expect(c.hddReads, JSON.stringify(c)).toBe(0)
          expect(c.ramHits + c.ssdHits).toBe(c.reads)
          // Overwrite small files in place (same size: same blocks): redirected to the SSD store.
          for (const f of smallFiles.slice(0, 20)) {
            const p = path.join(guest, f)
            const n = fs.statSync(p).size
            const fd = fs.openSync(p, 'r+')
            fs.writeSync(fd, Buffer.alloc(n, 0x5a), 0, n, 0)
            fs.closeSync(fd)
            fs.writeFileSync(path.join(tree, f), Buffer.alloc(n, 0x5a))
          }
          execFileSync('sync', ['-f', guest])
        } finally {
          execFileSync('umount', [guest])
        }
        const st2 = imageStats(m.mnt)!
        expect(st2.classes['small-file'].redirected).toBeGreaterThanOrEqual(20)
        expect(st2.dirtyBlocks).toBeGreaterThan(0)
      } finally {
        execFileSync('losetup', ['-d', loop])
      }
      expect(await m.stop()).toBe(0)
      stopped = true
    } finally {
      if (!stopped) await m.stop().catch(() => undefined)
    }
    // The HDD file alone: clean, and every file's bytes (the overwritten ones destaged at unmount).
    checkImageAlone(img, guest, () => {
      for (const f of sizes.keys()) expect(sha(path.join(guest, f)), f).toBe(sha(path.join(tree, f)))
    })
    // --small-files 0: the clean-unmount record (made with 32 KiB) does not fit, the image is scanned, nothing is small-file.
    const off = await mount(store, mnt, ['--small-files', '0'])
    try {
      fs.closeSync(fs.openSync(path.join(off.mnt, 'vm.img'), 'r'))
      await waitFor(() => imageStats(off.mnt)?.scan.warm === true, 30_000, 'the scan')
      const st = imageStats(off.mnt)!
      expect(st.mapClasses['small-file']).toBeUndefined()
      expect(st.scan.restored).toBe(false)
      expect(off.log()).toMatch(/small files' data with the meta-data: off/)
    } finally {
      expect(await off.stop()).toBe(0)
    }
  }, 120_000)
})
