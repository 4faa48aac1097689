// The guest play of the datapath (issue 5): an ext4 and an ext3 image in the
// store, loop-mounted with direct I/O from a file inside the mount, take a
// meta-data-heavy workload (10,000 files created, appends, renames, rm -rf of
// half, a tarball unpacked). The same workload runs on a reference directory.
// Then: the live map agrees with the e2fsprogs oracle on the destaged image
// (>= 99.9% of its meta-data blocks are meta-data in the live map), e2fsck -fn
// is clean on the HDD file after unmount, and every file's hash equals the
// reference tree's.
import { execFileSync, spawnSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { destage, imageStats, liveMap, mapBlocks, waitForImage } from '../helpers/control'
import { e2oracle } from '../helpers/e2oracle'
import { checkImageAlone, mount, tmpdir, waitFor } from '../helpers/mount'

let base = ''
let tarball = ''
beforeAll(() => {
  base = tmpdir('vmdi-guest-')
  // A tarball of real source files (this project's src/): many small files in nested directories.
  tarball = path.join(base, 'src.tar')
  execFileSync('tar', ['-cf', tarball, '-C', path.resolve(__dirname, '..', '..'), 'src'])
})
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

/** The workload, run the same way in the guest and in the reference directory. */
function workload(root: string): void {
  for (let d = 0; d < 100; d++) {
    const dir = path.join(root, `d${d}`)
    fs.mkdirSync(dir)
    for (let f = 0; f < 100; f++) fs.writeFileSync(path.join(dir, `f${f}`), `${d}/${f} `.repeat(1 + ((d * 7 + f) % 300)))
  }
  for (let d = 0; d < 100; d += 3) for (let f = 0; f < 100; f += 10) fs.appendFileSync(path.join(root, `d${d}`, `f${f}`), crypto.createHash('sha256').update(`${d}.${f}`).digest('hex').repeat(50))
  for (let d = 0; d < 100; d += 10) fs.renameSync(path.join(root, `d${d}`), path.join(root, `renamed${d}`))
  for (let d = 1; d < 100; d += 2) fs.rmSync(path.join(root, `d${d}`), { recursive: true })
  execFileSync('tar', ['-xf', tarball, '-C', root])
}

function hashTree(root: string): Map<string, string> {
  const out = new Map<string, string>()
  const walk = (rel: string) => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const r = path.join(rel, e.name)
      if (e.name === 'lost+found') continue
      if (e.isDirectory()) walk(r)
      else out.set(r, crypto.createHash('sha256').update(fs.readFileSync(path.join(root, r))).digest('hex'))
    }
  }
  walk('')
  return out
}

for (const type of ['ext4', 'ext3'] as const) {
  describe(`a guest ${type} through the datapath`, () => {
    it('keeps every byte, a clean file system on the HDD after destage, and a live map that agrees with e2fsprogs', async () => {
      const dir = path.join(base, type)
      const store = path.join(dir, 'store')
      const mnt = path.join(dir, 'mnt')
      const guest = path.join(dir, 'guest')
      const ref = path.join(dir, 'ref')
      for (const d of [store, guest, ref]) fs.mkdirSync(d, { recursive: true })
      const img = path.join(store, `${type}.img`)
      execFileSync('mke2fs', ['-q', '-t', type, '-b', '4096', '-N', '32768', img, '256M'])
      workload(ref)
      const m = await mount(store, mnt)
      let stopped = false
      try {
        const loop = execFileSync('losetup', ['--direct-io=on', '-f', '--show', path.join(mnt, `${type}.img`)], { encoding: 'utf8' }).trim()
        try {
          // The scan runs in the background: wait for it so the workload is routed by class.
          await waitForImage(mnt, (i) => i.scan.state === 'done', { what: 'the scan' })
          execFileSync('mount', ['-t', type, loop, guest])
          try {
            workload(guest)
            execFileSync('sync', ['-f', guest])
          } finally {
            execFileSync('umount', [guest])
          }
        } finally {
          execFileSync('losetup', ['-d', loop])
        }
        const im = imageStats(mnt, `${type}.img`)!
        // Meta-data writes were redirected, and the journal / directories / inode tables were among them.
        const redirected = Object.values(im.classes).reduce((a, c) => a + c.redirected, 0)
        expect(redirected).toBeGreaterThan(1000)
        expect(im.classes['inode-table'].redirected).toBeGreaterThan(0)
        expect(im.classes['directory'].redirected).toBeGreaterThan(0)
        expect(im.promoted).toBeGreaterThan(0)
        destage(mnt)
        // The live map against the oracle on the (now whole) HDD file.
        const liveMeta = mapBlocks(liveMap(mnt, `${type}.img`))
        const oracle = e2oracle(img)
        let meta = 0
        let hit = 0
        const missed: string[] = []
        for (const [b, cls] of oracle.classes) {
          if (cls === 'data') continue
          meta++
          if (liveMeta.has(b)) hit++
          else if (missed.length < 10) missed.push(`${b}:${cls}`)
        }
        expect(meta).toBeGreaterThan(1000)
        expect(hit / meta, `live map misses ${meta - hit} of ${meta} oracle meta-data blocks, e.g. ${missed.join(' ')}`).toBeGreaterThanOrEqual(0.999)
        expect(await m.stop()).toBe(0)
        stopped = true
      } finally {
        if (!stopped) await m.stop().catch(() => undefined)
      }
      // A clean file system and every file's bytes, read from the HDD file alone.
      checkImageAlone(img, guest, () => {
        const got = hashTree(guest)
        const want = hashTree(ref)
        expect(got.size).toBe(want.size)
        for (const [k, v] of want) if (got.get(k) !== v) throw new Error(`${k} differs from the reference tree`)
      })
      // Warm start: a remount knows the image (saved map at once, blocks in the SSD store, the file
      // systems restored from the clean-unmount record without an inode walk) and refills RAM from
      // the SSD store, so the first du hits RAM.
      const again = await mount(store, mnt)
      try {
        const loop2 = execFileSync('losetup', ['--direct-io=on', '-f', '--show', path.join(mnt, `${type}.img`)], { encoding: 'utf8' }).trim()
        try {
          await waitFor(() => /saved map used at once/.test(again.log()), 10_000, 'the attach line')
          await waitFor(() => imageStats(again.mnt)!.scan.warm === true, 30_000, 'the warm start')
          // The log line reaches us through the daemon's output pipe, maybe after stats says warm.
          await waitFor(() => /warm start: \d+ block\(s\) copied to RAM from the SSD store/.test(again.log()), 10_000, 'the RAM refill log line')
          expect(imageStats(again.mnt)!.ramRefilled).toBeGreaterThan(100)
          execFileSync('mount', ['-o', 'ro', '-t', type, loop2, guest])
          try {
            execFileSync('du', ['-s', guest])
          } finally {
            execFileSync('umount', [guest])
          }
          const im = imageStats(again.mnt)!
          let metaReads = 0
          let hits = 0
          let ramHits = 0
          for (const [cls, c] of Object.entries(im.classes)) {
            if (cls === 'data' || cls === 'free') continue
            metaReads += c.reads
            hits += c.ramHits + c.ssdHits
            ramHits += c.ramHits
          }
          expect(metaReads).toBeGreaterThan(100)
          const got = `${hits} of ${metaReads} meta-data reads hit RAM or the SSD store, ${ramHits} RAM: ${JSON.stringify(im.classes)}`
          expect(hits / metaReads, `first du after a remount: ${got}`).toBeGreaterThanOrEqual(0.99)
          // RAM started empty: its hits are the refill's. All-zero blocks (unused inode-table
          // space, reserved GDT blocks) stay on the SSD store only.
          expect(ramHits / metaReads, `first du after a remount: ${got}`).toBeGreaterThanOrEqual(0.9)
          expect(imageStats(again.mnt)!.scan.restored).toBe(true)
          // The restored live map keeps up with new writes as a scanned one does.
          execFileSync('mount', ['-t', type, loop2, guest])
          try {
            for (let d = 0; d < 30; d++) {
              fs.mkdirSync(path.join(guest, `after${d}`))
              for (let f = 0; f < 40; f++) fs.writeFileSync(path.join(guest, `after${d}`, `f${f}`), `after ${d}/${f}`.repeat(1 + f * 20))
            }
            fs.rmSync(path.join(guest, 'src'), { recursive: true })
            execFileSync('sync', ['-f', guest])
          } finally {
            execFileSync('umount', [guest])
          }
        } finally {
          execFileSync('losetup', ['-d', loop2])
        }
        destage(again.mnt)
        const liveMeta2 = mapBlocks(liveMap(again.mnt, `${type}.img`))
        const oracle2 = e2oracle(img)
        let meta2 = 0
        let hit2 = 0
        for (const [b, cls] of oracle2.classes) {
          if (cls === 'data') continue
          meta2++
          if (liveMeta2.has(b)) hit2++
        }
        expect(hit2 / meta2, `after a restore and more writes the live map misses ${meta2 - hit2} of ${meta2}`).toBeGreaterThanOrEqual(0.999)
      } finally {
        expect(await again.stop()).toBe(0)
      }
      const fsck2 = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' })
      expect(fsck2.status, fsck2.stdout + fsck2.stderr).toBe(0)
    }, 240_000)
  })
}
