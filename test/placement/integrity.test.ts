// The datapath's random-operation integrity checker (issue 5): reads, writes,
// truncates and fsyncs at random offsets and sizes on raw, sparse-VMDK and
// qcow2 images served with introspection on, each checked against an
// in-memory shadow. Random writes land on the images' own meta-data too
// (container tables, superblocks, inode tables), so the live map is fed
// garbage and must stay harmless. Then: destage makes each HDD file equal to
// its shadow, and a remount reads the same bytes.
// VMDI_INTEGRITY_OPS sets the operations per image (default 1500; the long
// mode is VMDI_INTEGRITY_OPS=35000: over 100,000 in all).
import { execFileSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { destage, imageStats, waitForImage } from '../helpers/control'
import { mount, tmpdir } from '../helpers/mount'
import { rng } from '../helpers/rng'

const OPS = Number(process.env.VMDI_INTEGRITY_OPS) || 1500
let root = ''
beforeAll(() => {
  root = tmpdir('vmdi-integrity-')
})
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))


const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex')

describe('random operations on raw, sparse VMDK and qcow2 images with introspection on', () => {
  // The native data path on (the default) with every operation, and off with a third of them.
  for (const native of [true, false]) {
  const ops = native ? OPS : Math.ceil(OPS / 3)
  it(`${ops} operations per image agree with a shadow; destage and a remount keep them (native data path ${native ? 'on' : 'off'})`, async () => {
    const base = path.join(root, native ? 'on' : 'off')
    fs.mkdirSync(base)
    const store = path.join(base, 'store')
    const tree = path.join(base, 'tree')
    fs.mkdirSync(store)
    fs.mkdirSync(tree)
    for (let i = 0; i < 200; i++) fs.writeFileSync(path.join(tree, `f${i}`), crypto.randomBytes(100 + i * 97))
    const raw = path.join(base, 'base.raw')
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', tree, raw, '48M'])
    fs.copyFileSync(raw, path.join(store, 'disk.img'))
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', raw, path.join(store, 'disk.vmdk')])
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=65536', raw, path.join(store, 'disk.qcow2')])
    const names = ['disk.img', 'disk.vmdk', 'disk.qcow2']
    const shadows = new Map<string, Buffer>()
    for (const n of names) shadows.set(n, fs.readFileSync(path.join(store, n)))
    const env = native ? {} : { VMDI_DATA_NATIVE: 'off' }
    const m = await mount(store, path.join(base, 'mnt'), ['--ram-cache', '256K'], env)
    try {
      for (const [k, name] of names.entries()) {
        const r = rng(1000 + k)
        const direct = k === 0 // one image through O_DIRECT (every op reaches the daemon), the others buffered
        const fh = await fs.promises.open(path.join(m.mnt, name), fs.constants.O_RDWR | (direct ? fs.constants.O_DIRECT : 0))
        try {
          await waitForImage(m.mnt, (i) => ['done', 'failed'].includes(i.scan.state), { image: name, ms: 60_000, what: `the scan of ${name}` })
          let sh = shadows.get(name)!
          for (let i = 0; i < ops; i++) {
            const x = r()
            const limit = sh.length + 64 * 1024
            // Half the operations aim at the first MiB (headers, tables, superblock, descriptors).
            const pos = Math.floor(r() * (r() < 0.5 ? Math.min(1 << 20, limit) : limit))
            const len = 1 + Math.floor(r() * (r() < 0.7 ? 6000 : 200_000))
            if (x < 0.45) {
              const got = Buffer.alloc(len)
              const { bytesRead } = await fh.read(got, 0, len, pos)
              const want = sh.subarray(pos, pos + len)
              if (bytesRead !== want.length || !got.subarray(0, bytesRead).equals(want)) {
                let d = 0
                while (d < want.length && got[d] === want[d]) d++
                throw new Error(`${name} op ${i}: read ${pos}+${len} differs from the shadow at byte ${pos + d} (${bytesRead} bytes, want ${want.length})`)
              }
            } else if (x < 0.93) {
              const data = crypto.randomBytes(len)
              await fh.write(data, 0, len, pos)
              if (pos + len > sh.length) sh = Buffer.concat([sh, Buffer.alloc(pos + len - sh.length)])
              data.copy(sh, pos)
            } else if (x < 0.95) {
              const to = Math.max(0, sh.length + Math.floor((r() - 0.6) * 256 * 1024))
              await fh.truncate(to)
              sh = to <= sh.length ? Buffer.from(sh.subarray(0, to)) : Buffer.concat([sh, Buffer.alloc(to - sh.length)])
            } else {
              await (r() < 0.5 ? fh.sync() : fh.datasync())
            }
          }
          shadows.set(name, sh)
          await fh.sync()
          const all = Buffer.alloc(sh.length)
          const { bytesRead } = await fh.read(all, 0, sh.length, 0)
          expect(bytesRead).toBe(sh.length)
          expect(sha(all) === sha(sh), `${name}: the whole file differs from the shadow`).toBe(true)
        } finally {
          await fh.close()
        }
      }
      for (const name of names) {
        const im = imageStats(m.mnt, name)
        if (!im) throw new Error(`${name} was not attached`)
        const redirected = Object.values(im.classes).reduce((a, c) => a + c.redirected, 0)
        expect(redirected, `${name}: meta-data writes were redirected`).toBeGreaterThan(0)
        // Data: the binding read and wrote it (native data path), or buffered handles read sequentially (the kernel's
        // read-ahead) and data was read ahead into RAM and served from it.
        if (native) expect(im.nativeReads + im.nativeWrites, `${name}: data served natively`).toBeGreaterThan(0)
        else if (name !== 'disk.img') expect(im.readAhead, `${name}: data read ahead`).toBeGreaterThan(0)
        if (!native) expect(im.nativeReads + im.nativeWrites, `${name}: nothing native`).toBe(0)
        // The O_DIRECT handle's reads of cached meta-data blocks were answered by the binding itself.
        if (name === 'disk.img') expect(im.nativeRamHits, `${name}: RAM hits served natively`).toBeGreaterThan(0)
      }
      destage(m.mnt)
      for (const name of names) expect(sha(fs.readFileSync(path.join(store, name))) === sha(shadows.get(name)!), `${name} on the HDD after destage`).toBe(true)
    } finally {
      expect(await m.stop()).toBe(0)
    }
    for (const name of names) expect(sha(fs.readFileSync(path.join(store, name))) === sha(shadows.get(name)!), `${name} on the HDD after unmount`).toBe(true)
    const again = await mount(store, path.join(base, 'mnt'), [], env)
    try {
      for (const name of names) expect(sha(fs.readFileSync(path.join(again.mnt, name))) === sha(shadows.get(name)!), `${name} through a remount`).toBe(true)
    } finally {
      expect(await again.stop()).toBe(0)
    }
  }, 600_000)
  }
})
