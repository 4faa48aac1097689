// The VM-start signal (issue 18, item 2): a hypervisor's lock file appearing
// through the mount (a `<disk>.lck` directory, a `.lck-<fileid>` file) or an
// image's first open starts its VM's boot: its meta-data and boot files' data
// go to RAM first (boot files at the boot priority); once the guest is quiet
// the boot ends and those blocks drop to the lowest RAM priority.
import { execFileSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ImageStats } from '../../src/control/protocol'
import { lockOf } from '../../src/placement/vm-start'
import { imageStats } from '../helpers/control'
import { mount, tmpdir, waitFor, type Mounted } from '../helpers/mount'

let base = ''
beforeAll(() => {
  base = tmpdir('vmdi-vmstart-')
})
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

describe('lock names', () => {
  it('a <disk>.lck directory names its disk, a .lck-<hex> file the locked file id; other names are not locks', () => {
    expect(lockOf('vm-flat.vmdk.lck')).toEqual({ disk: 'vm-flat.vmdk' })
    expect(lockOf('.lck-2a0f')).toEqual({ fileid: 0x2a0f })
    expect(lockOf('.lck-')).toBeNull()
    expect(lockOf('notes.txt')).toBeNull()
    expect(lockOf('.lck')).toBeNull()
  })
})

describe('the VM-start signal through a mount', () => {
  it('first open and lock files bring the boot files into RAM at the boot priority; a quiet guest ends the boot and they drop to the lowest', async () => {
    const root = path.join(base, 'root')
    const put = (rel: string, bytes: number) => {
      fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true })
      fs.writeFileSync(path.join(root, rel), crypto.randomBytes(bytes))
    }
    put('boot/vmlinuz-6.1.0-9-amd64', 2 << 20)
    put('boot/initrd.img-6.1.0-9-amd64', 3 << 20)
    put('usr/lib/systemd/systemd', 300 << 10)
    put('usr/lib/libc.so.6', 1 << 20) // read at boot, not a boot file by name: learnt
    for (let i = 0; i < 50; i++) put(`etc/f${i}`, 500 + i * 100)
    fs.mkdirSync(path.join(root, 'usr/sbin'), { recursive: true })
    fs.symlinkSync('../lib/systemd/systemd', path.join(root, 'usr/sbin/init'))
    fs.symlinkSync('usr/sbin', path.join(root, 'sbin'))
    const store = path.join(base, 'store')
    fs.mkdirSync(path.join(store, 'vm1'), { recursive: true })
    const img = path.join(store, 'vm1', 'disk.img')
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', root, img, '64M'])
    const ino = fs.statSync(img).ino
    const libc = execFileSync('debugfs', ['-R', 'blocks /usr/lib/libc.so.6', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split(/\s+/).map(Number)
    const readLibc = (mnt: string) => {
      const f = fs.openSync(path.join(mnt, 'vm1', 'disk.img'), fs.constants.O_RDONLY | fs.constants.O_DIRECT)
      const b = Buffer.alloc(4096)
      for (const blk of libc) fs.readSync(f, b, 0, 4096, blk * 4096)
      fs.closeSync(f)
    }
    const m: Mounted = await mount(store, path.join(base, 'mnt'), ['--ram-cache', '64M'], { VMDI_BOOT_QUIET_MS: '1500' })
    const im = (): ImageStats => imageStats(m.mnt, 'vm1/disk.img')!
    try {
      // The first open is a start: the scan, then the boot set first; boot files at the boot priority.
      const fd = fs.openSync(path.join(m.mnt, 'vm1', 'disk.img'), 'r')
      await waitFor(() => im()?.scan.warm === true, 60_000, 'the scan and warm start')
      const boot = im().mapClasses['boot-file']
      expect(boot).toBeGreaterThan(1000) // kernel, initrd, init: 5.3 MiB
      const first = im()
      expect(first.bootRam.blocks).toBe(boot)
      // Still booting (the open handle's guest is not quiet long enough yet) or just ended: either way every boot block was raised or dropped.
      expect(first.bootRam.raised === boot || first.bootsEnded > 0).toBe(true)
      if (first.bootsEnded === 0) readLibc(m.mnt) // the boot reads a library (natively: an open alone learns only what reaches JavaScript)
      fs.closeSync(fd)
      // Quiet: the boot ends, the boot files' blocks drop to the lowest priority (still cached).
      await waitFor(() => im().bootsEnded >= 1 && !im().booting, 10_000, 'the end of the boot')
      expect(im().bootRam).toEqual({ blocks: boot, raised: 0 })
      // (the daemon's log reaches us through a pipe: wait for the line)
      await waitFor(() => /image vm1\/disk\.img: boot over \(quiet for 1\.5 s\): \d+ data block\(s\) it read kept as its boot set; \d+ block\(s\) in RAM only the boot needed dropped to the lowest priority/.test(m.log()), 5_000, 'the log line of the end of the boot')

      // A VMFS-style lock directory beside the disk: the next start.
      fs.mkdirSync(path.join(m.mnt, 'vm1', 'disk.img.lck'))
      await waitFor(() => im().booting && im().bootRam.raised === boot, 5_000, 'the boot set raised after the lock directory')
      await waitFor(() => /image vm1\/disk\.img: VM start \(lock disk\.img\.lck\)/.test(m.log()), 5_000, 'the log line of the start')
      await waitFor(() => im().bootsEnded >= 2, 10_000, 'the end of the second boot')
      fs.rmdirSync(path.join(m.mnt, 'vm1', 'disk.img.lck'))
      // An NFS datastore's lock file, named after the disk's file id.
      fs.writeFileSync(path.join(m.mnt, 'vm1', `.lck-${ino.toString(16)}`), 'lock')
      await waitFor(() => im().booting && im().bootRam.raised === boot, 5_000, 'the boot set raised after the .lck file')
      // Another file's lock, or a file that is no lock, starts nothing.
      await waitFor(() => im().bootsEnded >= 3, 10_000, 'the end of the third boot')
      fs.writeFileSync(path.join(m.mnt, 'vm1', `.lck-${(ino + 1).toString(16)}`), 'lock')
      fs.mkdirSync(path.join(m.mnt, 'vm1', 'other.img.lck'))
      fs.writeFileSync(path.join(m.mnt, 'vm1', 'notes.txt'), 'x')
      await new Promise((r) => setTimeout(r, 500))
      expect(im().booting).toBe(false)
      expect(im().bootRam.raised).toBe(0)
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 120_000)

  it('learns what a boot reads, keeps it on the SSD store and prefetches it into RAM at the next start; the boot then reads it from RAM, a block written since with its new bytes', async () => {
    const store = path.join(base, 'store2')
    fs.mkdirSync(path.join(store, 'vm1'), { recursive: true })
    const tree = path.join(base, 'tree2')
    fs.mkdirSync(path.join(tree, 'lib'), { recursive: true })
    const content = crypto.randomBytes(2 << 20)
    fs.writeFileSync(path.join(tree, 'lib', 'libfoo.so'), content)
    const img = path.join(store, 'vm1', 'disk.img')
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', tree, img, '64M'])
    const lib = execFileSync('debugfs', ['-R', 'blocks /lib/libfoo.so', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split(/\s+/).map(Number)
    const env = { VMDI_BOOT_QUIET_MS: '1500' }
    const fresh = crypto.randomBytes(4096)
    // The guest reads the library again: every block as it is (block 3 rewritten after the first boot).
    const readLibrary = (f: number) => {
      const b = Buffer.alloc(4096)
      for (const [i, blk] of lib.entries()) {
        fs.readSync(f, b, 0, 4096, blk * 4096)
        expect(b.equals(i === 3 ? fresh : content.subarray(i * 4096, (i + 1) * 4096)), `block ${i} of the library`).toBe(true)
      }
    }
    const boot = async (mnt: string, m: Mounted) => {
      const f = fs.openSync(path.join(mnt, 'vm1', 'disk.img'), fs.constants.O_RDONLY | fs.constants.O_DIRECT)
      await waitFor(() => imageStats(mnt, 'vm1/disk.img')?.scan.warm === true, 60_000, 'the scan and warm start')
      // The hypervisor's lock: every read of this boot goes through JavaScript and is learnt.
      fs.mkdirSync(path.join(mnt, 'vm1', 'disk.img.lck'))
      const b = Buffer.alloc(4096)
      for (const blk of lib) fs.readSync(f, b, 0, 4096, blk * 4096)
      fs.closeSync(f)
      await waitFor(() => (imageStats(mnt, 'vm1/disk.img')?.bootsEnded ?? 0) >= 1, 10_000, 'the end of the boot')
      fs.rmdirSync(path.join(mnt, 'vm1', 'disk.img.lck'))
      return imageStats(m.mnt, 'vm1/disk.img')!
    }
    let m = await mount(store, path.join(base, 'mnt2'), ['--ram-cache', '64M'], env)
    let first: ImageStats
    try {
      first = await boot(m.mnt, m)
      expect(first.bootLearned).toBeGreaterThanOrEqual(lib.length)
      expect(first.bootPrefetched).toBe(0)
      // Its data blocks get clean copies on the SSD store (read back from the HDD: nothing kept them in RAM).
      await waitFor(() => (imageStats(m.mnt, 'vm1/disk.img')?.bootKept ?? 0) >= lib.length, 20_000, 'the learnt set kept on the SSD store')
      const held = imageStats(m.mnt, 'vm1/disk.img')!.ssdBlocks
      // The guest rewrites one of them: the store's copy goes, the HDD file has the new bytes.
      const f = fs.openSync(path.join(m.mnt, 'vm1', 'disk.img'), 'r+')
      fs.writeSync(f, fresh, 0, 4096, lib[3] * 4096)
      fs.fsyncSync(f)
      fs.closeSync(f)
      expect(imageStats(m.mnt, 'vm1/disk.img')!.ssdBlocks).toBe(held - 1)
    } finally {
      expect(await m.stop()).toBe(0)
    }
    // The next start (a new daemon: RAM empty): the learnt blocks come into RAM before the guest asks.
    m = await mount(store, path.join(base, 'mnt2'), ['--ram-cache', '64M'], env)
    try {
      const f = fs.openSync(path.join(m.mnt, 'vm1', 'disk.img'), fs.constants.O_RDONLY | fs.constants.O_DIRECT)
      await waitFor(() => (imageStats(m.mnt, 'vm1/disk.img')?.bootPrefetched ?? 0) >= lib.length, 30_000, 'the prefetch of the learnt boot set')
      await waitFor(() => m.log().includes(`then the ${first.bootLearned} block(s) its last boot read`), 5_000, 'the start line naming the learnt set')
      const before = imageStats(m.mnt, 'vm1/disk.img')!.classes.data ?? { reads: 0, ramHits: 0 }
      readLibrary(f)
      fs.closeSync(f)
      const after = imageStats(m.mnt, 'vm1/disk.img')!.classes.data
      // Every block of the library the boot read again was a RAM hit.
      expect(after.ramHits - before.ramHits).toBe(lib.length)
    } finally {
      expect(await m.stop()).toBe(0)
    }
    // A start with RAM for a fraction of the set (a boot storm's share): the prefetch stops at its
    // share, and the guest's reads of the rest come from the SSD store's copies, not the HDD.
    m = await mount(store, path.join(base, 'mnt2'), ['--ram-cache', '1M'], env)
    try {
      const f = fs.openSync(path.join(m.mnt, 'vm1', 'disk.img'), fs.constants.O_RDONLY | fs.constants.O_DIRECT)
      await waitFor(() => imageStats(m.mnt, 'vm1/disk.img')?.scan.warm === true, 60_000, 'the warm start')
      await new Promise((r) => setTimeout(r, 500))
      const st = imageStats(m.mnt, 'vm1/disk.img')!
      expect(st.bootPrefetched).toBeLessThan(lib.length)
      const before = st.classes.data ?? { ssdHits: 0, hddReads: 0 }
      readLibrary(f)
      fs.closeSync(f)
      const after = imageStats(m.mnt, 'vm1/disk.img')!.classes.data
      expect(after.ssdHits - (before.ssdHits ?? 0)).toBeGreaterThan(lib.length / 2)
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 180_000)
})
