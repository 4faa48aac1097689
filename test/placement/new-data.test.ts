// New data held back on the SSD store (--new-data, default on): through a
// real mount with an ext4 guest, writes to blocks the guest has just allocated
// (free in its on-disk bitmaps) are redirected to the SSD store and served
// from there, overwrites of blocks the bitmaps show in use are not, a destage
// writes them to the HDD file (the store keeps no copy of file data), and the
// HDD file alone is a clean file system with every byte; `--new-data 0` sends
// new data straight to the HDD. The kill -9 case (new files fsync'ed, then the
// daemon killed) is safety.test.ts's, which runs with the default on.
import { execFileSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { destage, imageStats } from '../helpers/control'
import { checkImageAlone, mount, testDirs, tmpdir, waitFor } from '../helpers/mount'

let base = ''
beforeAll(() => {
  base = tmpdir('vmdi-newdata-')
})
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

/** Days, not the default quarter second: held-back blocks stay in the SSD store until the test destages them. */
const NO_BACKGROUND_DESTAGE = { VMDI_DESTAGE_INTERVAL_MS: String(24 * 3600 * 1000) }

function sha(p: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex')
}

/** Files of random bytes under dir (each > 32 KiB: file data, not small-file), their hashes by relative path. */
function writeFiles(dir: string, prefix: string, count: number, bytes: number): Map<string, string> {
  const out = new Map<string, string>()
  fs.mkdirSync(dir, { recursive: true })
  for (let i = 0; i < count; i++) {
    const body = crypto.randomBytes(bytes)
    const rel = `${prefix}${i}`
    fs.writeFileSync(path.join(dir, rel), body)
    out.set(rel, crypto.createHash('sha256').update(body).digest('hex'))
  }
  return out
}

describe('a mount holding new data on the SSD store', () => {
  it('redirects writes to newly allocated blocks and serves them from the store, not overwrites in place; destage empties it; e2fsck clean and every byte after unmount', async () => {
    const { store, guest, tree, mnt } = testDirs(base, 'on')
    const old = writeFiles(tree, 'old', 8, 256 << 10)
    const img = path.join(store, 'vm.img')
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', tree, img, '256M'])
    const m = await mount(store, mnt, [], NO_BACKGROUND_DESTAGE)
    const want = new Map<string, string>(old)
    let stopped = false
    try {
      expect(m.log()).toMatch(/new data held on the SSD store: up to \d+ MiB \(default/)
      const loop = execFileSync('losetup', ['--direct-io=on', '-f', '--show', path.join(m.mnt, 'vm.img')], { encoding: 'utf8' }).trim()
      try {
        await waitFor(() => imageStats(m.mnt)?.scan.warm === true, 30_000, 'the scan and preload')
        execFileSync('mount', ['-t', 'ext4', loop, guest])
        try {
          // New files: 40 of 256 KiB and one of 16 MiB (10,240 + 4,096 blocks of file data).
          for (const [k, v] of writeFiles(path.join(guest, 'new'), 'f', 40, 256 << 10)) want.set(path.join('new', k), v)
          for (const [k, v] of writeFiles(path.join(guest, 'new'), 'big', 1, 16 << 20)) want.set(path.join('new', k), v)
          execFileSync('sync', ['-f', guest])
          const s1 = imageStats(m.mnt)!
          const newBlocks = 40 * 64 + 4096
          expect(s1.absorbed, JSON.stringify(s1)).toBeGreaterThanOrEqual(newBlocks)
          expect(s1.classes.data.redirected).toBeGreaterThanOrEqual(newBlocks)
          expect(s1.dirtyBlocks).toBeGreaterThanOrEqual(newBlocks)
          // Overwrites in place of files the bitmaps show in use go to the HDD: nothing more held back.
          for (const rel of old.keys()) {
            const body = crypto.randomBytes(256 << 10)
            const fd = fs.openSync(path.join(guest, rel), 'r+')
            fs.writeSync(fd, body, 0, body.length, 0)
            fs.closeSync(fd)
            want.set(rel, crypto.createHash('sha256').update(body).digest('hex'))
          }
          execFileSync('sync', ['-f', guest])
          const s2 = imageStats(m.mnt)!
          expect(s2.classes.data.writes - s1.classes.data.writes).toBeGreaterThanOrEqual(8 * 64)
          expect(s2.absorbed).toBe(s1.absorbed)
          expect(s2.classes.data.redirected).toBe(s1.classes.data.redirected)
        } finally {
          execFileSync('umount', [guest])
        }
        // A fresh guest mount (its caches gone) reads every byte back; the new data from the SSD store.
        execFileSync('mount', ['-t', 'ext4', loop, guest])
        try {
          for (const [rel, h] of want) expect(sha(path.join(guest, rel)), rel).toBe(h)
        } finally {
          execFileSync('umount', [guest])
        }
        // Destage: everything held goes to the HDD file, and the store keeps no copy of file data.
        const before = imageStats(m.mnt)!
        destage(m.mnt)
        const after = imageStats(m.mnt)!
        expect(after.dirtyBlocks).toBe(0)
        expect(after.destaged - before.destaged).toBeGreaterThanOrEqual(40 * 64 + 4096)
        expect(before.ssdBlocks - after.ssdBlocks).toBeGreaterThanOrEqual(40 * 64 + 4096)
      } finally {
        execFileSync('losetup', ['-d', loop])
      }
      expect(await m.stop()).toBe(0)
      stopped = true
    } finally {
      if (!stopped) await m.stop().catch(() => undefined)
    }
    checkImageAlone(img, guest, () => {
      for (const [rel, h] of want) expect(sha(path.join(guest, rel)), rel).toBe(h)
    })

    // --new-data 0: new files go straight to the HDD.
    const off = await mount(store, mnt, ['--new-data', '0'], NO_BACKGROUND_DESTAGE)
    try {
      expect(off.log()).toMatch(/new data held on the SSD store: off/)
      const loop = execFileSync('losetup', ['--direct-io=on', '-f', '--show', path.join(off.mnt, 'vm.img')], { encoding: 'utf8' }).trim()
      try {
        await waitFor(() => imageStats(off.mnt)?.scan.warm === true, 30_000, 'the scan')
        execFileSync('mount', ['-t', 'ext4', loop, guest])
        try {
          writeFiles(path.join(guest, 'more'), 'g', 10, 256 << 10)
          execFileSync('sync', ['-f', guest])
        } finally {
          execFileSync('umount', [guest])
        }
        const s = imageStats(off.mnt)!
        expect(s.classes.data.writes).toBeGreaterThanOrEqual(640)
        expect(s.absorbed).toBe(0)
        expect(s.classes.data.redirected).toBe(0)
      } finally {
        execFileSync('losetup', ['-d', loop])
      }
    } finally {
      expect(await off.stop()).toBe(0)
    }
  }, 180_000)
})
