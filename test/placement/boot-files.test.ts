// Boot files' data on the fast tiers (--boot-files, the mount's default): the
// ext scan finds kernels and initial RAM disks in / and /boot and what
// /sbin/init names (symlinks followed, as on a merged-/usr Debian) and classes
// their data blocks boot-file, exactly the blocks debugfs `blocks` lists for
// them and no others; the live map lets a removed one go (its reused inode is
// not a boot file); and through a mount: their data is preloaded and a guest
// reads them without the HDD.
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
import { mount, testDirs, tmpdir, waitFor } from '../helpers/mount'

let base = ''
beforeAll(() => {
  base = tmpdir('vmdi-boot-')
})
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

const KV = '6.1.0-9-amd64'

function put(root: string, rel: string, bytes: number): void {
  fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true })
  fs.writeFileSync(path.join(root, rel), crypto.randomBytes(bytes))
}

/** A Debian-like root: merged /usr (/sbin → usr/sbin), init → systemd, kernel and initrd in /boot with links in /. */
function rootTree(root: string): void {
  put(root, `boot/vmlinuz-${KV}`, 2 << 20)
  put(root, `boot/initrd.img-${KV}`, 3 << 20)
  put(root, `boot/config-${KV}`, 100 << 10)
  put(root, `boot/System.map-${KV}`, 200 << 10)
  put(root, 'usr/lib/systemd/systemd', 300 << 10)
  put(root, 'usr/bin/bash', 500 << 10)
  put(root, 'etc/fstab', 300)
  fs.mkdirSync(path.join(root, 'usr/sbin'), { recursive: true })
  fs.symlinkSync('../lib/systemd/systemd', path.join(root, 'usr/sbin/init'))
  fs.symlinkSync('usr/sbin', path.join(root, 'sbin'))
  fs.symlinkSync(`boot/vmlinuz-${KV}`, path.join(root, 'vmlinuz'))
  fs.symlinkSync(`boot/initrd.img-${KV}`, path.join(root, 'initrd.img'))
}

/** fs blocks of each file (debugfs `blocks`), by path. */
function blocksOf(img: string, files: string[]): Map<string, number[]> {
  const out = new Map<string, number[]>()
  for (const f of files) {
    const s = execFileSync('debugfs', ['-R', `blocks ${f}`, img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    out.set(f, s.trim().split(/\s+/).filter(Boolean).map(Number))
  }
  return out
}

function inodeOf(img: string, file: string): number {
  const s = execFileSync('debugfs', ['-R', `stat ${file}`, img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
  return Number(/Inode: (\d+)/.exec(s)![1])
}

/** Every block whose class differs from `want` (at most 10). */
function bootDiff(efs: ExtFs, boot: Set<number>, blocks: number): string[] {
  const wrong: string[] = []
  for (let b = 0; b < blocks && wrong.length < 10; b++) {
    const got = efs.classOf(b) === BlockClass.BootFile
    if (got !== boot.has(b)) wrong.push(`block ${b}: ${className(efs.classOf(b))}, want ${boot.has(b) ? 'boot-file' : 'not boot-file'}`)
  }
  return wrong
}

describe('the ext scan with boot files', () => {
  it('classes the data of the kernel, the initrd and init (symlinks followed) boot-file, as debugfs places it, and nothing else; a state made without does not restore', async () => {
    const tree = path.join(base, 'root')
    rootTree(tree)
    const img = path.join(base, 'root.img')
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', tree, img, '64M'])
    const bootPaths = [`/boot/vmlinuz-${KV}`, `/boot/initrd.img-${KV}`, '/usr/lib/systemd/systemd']
    const want = new Set([...blocksOf(img, bootPaths).values()].flat())
    expect(want.size).toBe(512 + 768 + 75)
    const r = await FileReader.open(img)
    try {
      const efs = await scanExt(r, { bootFiles: true, smallFileBytes: 32 << 10 })
      expect(efs.stats.skipped.count).toBe(0)
      expect(efs.bootFileInodes).toEqual(bootPaths.map((p) => inodeOf(img, p)).sort((a, b) => a - b))
      expect(bootDiff(efs, want, efs.info.blocksCount)).toEqual([])
      // Off: no boot-file class; the rest of the map is the same.
      const off = await scanExt(r, { smallFileBytes: 32 << 10 })
      expect(off.map.countByClass().get(BlockClass.BootFile)).toBeUndefined()
      for (let b = 0; b < efs.info.blocksCount; b++) if (!want.has(b)) expect(off.classOf(b)).toBe(efs.classOf(b))
      // A saved state carries the setting and the boot inodes.
      const back = await ExtFs.restore(r, efs.exportState(), { bootFiles: true, smallFileBytes: 32 << 10 })
      expect(back.bootFileInodes).toEqual(efs.bootFileInodes)
      await expect(ExtFs.restore(r, off.exportState(), { bootFiles: true, smallFileBytes: 32 << 10 })).rejects.toThrow(CorruptError)
    } finally {
      await r.close()
    }
  })

  it('finds them at the root of a separate /boot file system; at most 32 boot files however many names match; symlink loops end', async () => {
    const tree = path.join(base, 'bootfs')
    fs.mkdirSync(path.join(tree, 'sbin'), { recursive: true })
    fs.symlinkSync('../sbin/init', path.join(tree, 'sbin', 'init')) // a loop
    fs.symlinkSync('vmlinuz', path.join(tree, 'vmlinuz')) // another
    put(tree, `vmlinuz-${KV}`, 1 << 20)
    put(tree, `initrd.img-${KV}`, 1 << 20)
    put(tree, 'grub/grub.cfg', 2000)
    for (let i = 0; i < 40; i++) put(tree, `initramfs-${i}.img`, 8192)
    const img = path.join(base, 'bootfs.img')
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', tree, img, '32M'])
    const r = await FileReader.open(img)
    try {
      const efs = await scanExt(r, { bootFiles: true })
      expect(efs.bootFileInodes.length).toBe(32)
      expect(efs.stats.skipped.count).toBe(0)
      const all = await blocksOf(img, [`/vmlinuz-${KV}`, `/initrd.img-${KV}`, '/grub/grub.cfg'])
      // Directory order decides which 32 of the 42 names; grub.cfg is never one.
      for (const b of all.get('/grub/grub.cfg')!) expect(efs.classOf(b)).toBe(BlockClass.Data)
      const counted = efs.map.countByClass().get(BlockClass.BootFile) ?? 0
      expect(counted).toBeGreaterThanOrEqual(30 * 2)
    } finally {
      await r.close()
    }
  })

  it('update(): a removed initrd goes back to data and its inode, reused by a new file, is not a boot file: the map equals a fresh scan', async () => {
    const tree = path.join(base, 'upd-root')
    rootTree(tree)
    const before = path.join(base, 'upd-before.img')
    const after = path.join(base, 'upd-after.img')
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', tree, before, '64M'])
    fs.copyFileSync(before, after)
    const initrdIno = inodeOf(before, `/boot/initrd.img-${KV}`)
    const mnt = path.join(base, 'upd-mnt')
    fs.mkdirSync(mnt, { recursive: true })
    execFileSync('mount', ['-o', 'loop', '-t', 'ext4', after, mnt])
    try {
      fs.rmSync(path.join(mnt, 'boot', `initrd.img-${KV}`))
      fs.rmSync(path.join(mnt, 'initrd.img'))
      execFileSync('sync', ['-f', mnt])
      for (let f = 0; f < 3; f++) fs.writeFileSync(path.join(mnt, 'etc', `new${f}`), crypto.randomBytes(200 << 10))
    } finally {
      execFileSync('umount', [mnt])
    }
    expect([0, 1, 2].map((f) => inodeOf(after, `/etc/new${f}`))).toContain(initrdIno)
    const { live, fresh, wrong } = await replayChanges(fs.readFileSync(before), fs.readFileSync(after), { bootFiles: true })
    expect(wrong).toEqual([])
    expect(fresh.bootFileInodes.length).toBe(2)
    expect(live.bootFileInodes).toEqual(fresh.bootFileInodes)
  })
})

describe('a mount with boot files on the fast tiers', () => {
  it('preloads the kernel, initrd and init into the SSD store and serves the guest\'s reads of them without the HDD', async () => {
    const { store, guest, tree, mnt } = testDirs(base, 'mount')
    rootTree(tree)
    const img = path.join(store, 'vm.img')
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', tree, img, '64M'])
    const m = await mount(store, mnt)
    try {
      expect(m.log()).toMatch(/boot files' data with the meta-data: on \(default/)
      const loop = execFileSync('losetup', ['--direct-io=on', '-f', '--show', path.join(m.mnt, 'vm.img')], { encoding: 'utf8' }).trim()
      try {
        await waitFor(() => imageStats(m.mnt)?.scan.warm === true, 30_000, 'the scan and preload')
        await waitFor(() => /small and boot files: \d+ data block\(s\)/.test(m.log()), 10_000, 'the preload of the boot files')
        expect(m.log()).toMatch(/1355 block\(s\) of boot files' data \(3 file\(s\)\)/)
        execFileSync('mount', ['-t', 'ext4', '-o', 'ro', loop, guest])
        try {
          for (const f of [`boot/vmlinuz-${KV}`, `boot/initrd.img-${KV}`, 'sbin/init']) {
            expect(crypto.createHash('sha256').update(fs.readFileSync(path.join(guest, f))).digest('hex'), f).toBe(
              crypto.createHash('sha256').update(fs.readFileSync(path.join(tree, f))).digest('hex'),
            )
          }
        } finally {
          execFileSync('umount', [guest])
        }
        const c = imageStats(m.mnt)!.classes['boot-file']
        expect(c.reads).toBeGreaterThanOrEqual(1355)
        expect(c.hddReads, JSON.stringify(c)).toBe(0)
      } finally {
        execFileSync('losetup', ['-d', loop])
      }
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 120_000)
})
