// The guest VM played by the kernel: an ext4 image in the store, attached to
// a loop device with direct I/O through the mount, written by the kernel's
// ext4 driver, then checked on the store side with e2fsck and debugfs.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFileSync, spawnSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { mount, Mounted, tmpdir } from '../helpers/mount'
import { destage } from '../helpers/control'

let m: Mounted
let base: string

beforeAll(async () => {
  base = tmpdir()
  fs.mkdirSync(path.join(base, 'store'))
  execFileSync('mke2fs', ['-q', '-t', 'ext4', path.join(base, 'store', 'guest.img'), '128M'])
  m = await mount(path.join(base, 'store'), path.join(base, 'mnt'))
})

afterAll(async () => {
  expect(await m?.stop()).toBe(0)
  fs.rmSync(base, { recursive: true, force: true })
})

describe('a guest ext4 on a loop device over an image inside the mount', () => {
  it('survives a meta-data-heavy workload and is clean on the store side', () => {
    const guest = path.join(base, 'guest')
    fs.mkdirSync(guest)
    const loop = execFileSync('losetup', ['--direct-io=on', '-f', '--show', path.join(m.mnt, 'guest.img')], { encoding: 'utf8' }).trim()
    const hashes = new Map<string, string>()
    try {
      execFileSync('mount', [loop, guest])
      try {
        for (let d = 0; d < 10; d++) {
          fs.mkdirSync(path.join(guest, `dir${d}`))
          for (let f = 0; f < 100; f++) {
            const body = crypto.createHash('sha256').update(`${d}/${f}`).digest('hex').repeat(1 + ((d * 100 + f) % 40))
            const rel = `dir${d}/file${f}`
            fs.writeFileSync(path.join(guest, rel), body)
            hashes.set(rel, crypto.createHash('sha256').update(body).digest('hex'))
          }
        }
        for (let f = 0; f < 100; f += 2) {
          fs.rmSync(path.join(guest, `dir3/file${f}`))
          hashes.delete(`dir3/file${f}`)
        }
        fs.renameSync(path.join(guest, 'dir4'), path.join(guest, 'moved'))
        for (const [rel, h] of [...hashes]) {
          if (rel.startsWith('dir4/')) {
            hashes.delete(rel)
            hashes.set(rel.replace('dir4/', 'moved/'), h)
          }
        }
      } finally {
        execFileSync('umount', [guest])
      }
    } finally {
      execFileSync('losetup', ['-d', loop])
    }
    // Meta-data the datapath held back reaches the HDD file (the last close started it; this waits for it).
    destage(m.mnt)
    const img = path.join(m.store, 'guest.img')
    const fsck = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' })
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0)
    // Every file's bytes, read by debugfs from the store's copy of the image.
    const sample = [...hashes.keys()].filter((_, i) => i % 37 === 0)
    for (const rel of sample) {
      const out = execFileSync('debugfs', ['-R', `cat /${rel}`, img], { stdio: ['ignore', 'pipe', 'ignore'] })
      expect(crypto.createHash('sha256').update(out).digest('hex')).toBe(hashes.get(rel))
    }
    const ls = execFileSync('debugfs', ['-R', 'ls -p /dir3', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    expect(ls.split('\n').filter((l) => /\/file\d+\//.test(l))).toHaveLength(50)
  })
})
