// After a kill -9: what `recover --apply` writes (never past the file's end),
// and an image another tool changed while the daemon was down (issue 16,
// items 9 and 10).
import { execFileSync, spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli } from '../helpers/cli'
import { stats } from '../helpers/control'
import { mount, tmpdir, waitFor } from '../helpers/mount'

let base = ''
beforeAll(() => {
  base = tmpdir('vmdi-crash-recover-')
})
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

/** Days: dirty blocks stay in the SSD store until a test destages them. */
const NO_BACKGROUND_DESTAGE = { VMDI_DESTAGE_INTERVAL_MS: String(24 * 3600 * 1000) }

async function scanned(mnt: string, name: string): Promise<void> {
  await waitFor(() => stats(mnt).images.some((i) => i.path === name && i.scan.state === 'done'), 60_000, `the scan of ${name}`)
}

/** The daemon is gone (kill -9): clear its dead mount. */
function clearDead(mnt: string): void {
  spawnSync('fusermount', ['-u', '-z', mnt])
  spawnSync('umount', ['-l', mnt])
}

describe('recover --apply of a file whose size is not a multiple of 4 KiB', () => {
  it('writes a dynamic VHD\'s held footer block back without growing the file', async () => {
    const dir = path.join(base, 'vhd')
    const store = path.join(dir, 'store')
    fs.mkdirSync(store, { recursive: true })
    const img = path.join(store, 'vm.vhd')
    execFileSync('qemu-img', ['create', '-q', '-f', 'vpc', img, '64M'])
    execFileSync('qemu-io', ['-c', 'write -P 0x11 0 1M', img], { stdio: 'ignore' })
    const size = fs.statSync(img).size
    expect(size % 4096).not.toBe(0) // a 512-byte footer ends the file
    const before = fs.readFileSync(img)
    const footer = before.subarray(size - 512)
    const m = await mount(store, path.join(dir, 'mnt'), [], NO_BACKGROUND_DESTAGE)
    const fd = fs.openSync(path.join(m.mnt, 'vm.vhd'), 'r+')
    await scanned(m.mnt, 'vm.vhd')
    fs.writeSync(fd, footer, 0, 512, size - 512) // the footer again: a container block, held on the SSD store
    fs.fsyncSync(fd)
    expect(stats(m.mnt).images.find((i) => i.path === 'vm.vhd')!.dirtyBlocks).toBeGreaterThan(0)
    m.proc.kill('SIGKILL')
    await m.exited
    try {
      fs.closeSync(fd)
    } catch {
      /* the mount is gone */
    }
    clearDead(m.mnt)
    const r = runCli(['recover', '--apply', img], { env: { ...process.env, VMDI_STATE_DIR: path.join(dir, 'state') } })
    expect(r.status, r.stderr).toBe(0)
    expect(fs.statSync(img).size).toBe(size)
    expect(fs.readFileSync(img).equals(before)).toBe(true)
    const read = spawnSync('qemu-io', ['-f', 'vpc', '-c', 'read -P 0x11 0 1M', img], { encoding: 'utf8' })
    expect(read.status, read.stdout + read.stderr).toBe(0)
    expect(read.stdout).not.toMatch(/fail|error/i)
  }, 120_000)
})

describe('a partitioned image repaired with e2fsck -fy on the HDD while the daemon was down after a kill -9', () => {
  it('is refused at the next mount (its first 4 KiB never changed), the repair and a new file kept; recover --discard resolves it', async () => {
    const dir = path.join(base, 'fsck')
    const store = path.join(dir, 'store')
    const guest = path.join(dir, 'guest')
    fs.mkdirSync(store, { recursive: true })
    fs.mkdirSync(guest, { recursive: true })
    const img = path.join(store, 'vm.img')
    execFileSync('truncate', ['-s', '96M', img])
    execFileSync('sfdisk', ['-q', img], { input: 'label: dos\nstart=2048, type=83\n' })
    const part = 2048 * 512
    execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-E', `offset=${part}`, img, '90M'])
    const head = fs.readFileSync(img).subarray(0, 4096)
    const env = { ...process.env, VMDI_STATE_DIR: path.join(dir, 'state') }
    const m = await mount(store, path.join(dir, 'mnt'), [], NO_BACKGROUND_DESTAGE)
    // The guest: the partition through a loop device over the image in the mount, 300 files written and synced.
    const loop = execFileSync('losetup', ['--direct-io=on', '-o', String(part), '-f', '--show', path.join(m.mnt, 'vm.img')], { encoding: 'utf8' }).trim()
    try {
      await scanned(m.mnt, 'vm.img')
      execFileSync('mount', ['-t', 'ext4', loop, guest])
      for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(guest, `f${i}`), `file ${i}\n`.repeat(50))
      execFileSync('sync', ['-f', path.join(guest, 'f0')])
      await waitFor(() => (stats(m.mnt).images.find((i) => i.path === 'vm.img')?.dirtyBlocks ?? 0) > 0, 10_000, 'dirty blocks')
      await new Promise((r) => setTimeout(r, 600)) // the daemon records its last write (every 250 ms)
      m.proc.kill('SIGKILL')
      await m.exited
    } finally {
      spawnSync('umount', ['-l', guest])
      spawnSync('losetup', ['-d', loop])
      clearDead(m.mnt)
    }
    // The administrator's next step, seconds later, on the HDD file: e2fsck -fy of the partition, and a new file in it.
    await new Promise((r) => setTimeout(r, 4000))
    const hdd = execFileSync('losetup', ['-o', String(part), '-f', '--show', img], { encoding: 'utf8' }).trim()
    try {
      spawnSync('e2fsck', ['-fy', hdd])
      execFileSync('debugfs', ['-w', '-R', `write ${path.join(dir, 'state')}/generation MARKER`, hdd], { stdio: 'ignore' })
      expect(execFileSync('debugfs', ['-R', 'ls -l /', hdd], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })).toMatch(/MARKER/)
    } finally {
      spawnSync('losetup', ['-d', hdd])
    }
    expect(fs.readFileSync(img).subarray(0, 4096).equals(head)).toBe(true) // block 0 never changed: the old check would accept it
    const repaired = fs.readFileSync(img)
    const m2 = await mount(store, m.mnt)
    try {
      let err: NodeJS.ErrnoException | null = null
      try {
        fs.readFileSync(path.join(m2.mnt, 'vm.img'))
      } catch (e) {
        err = e as NodeJS.ErrnoException
      }
      expect(err?.code).toBe('EIO')
      await waitFor(() => /image vm\.img changed on the HDD behind the SSD store's back \(its ctime .* is later than this daemon's last write .*recover --apply .*--discard/.test(m2.log()), 10_000, 'the refusal in the log')
      expect(stats(m2.mnt).refused).toContain('vm.img')
    } finally {
      expect(await m2.stop()).toBe(0)
    }
    expect(fs.readFileSync(img).equals(repaired)).toBe(true) // nothing destaged over the repair
    expect(runCli(['recover', '--discard', img], { env }).status).toBe(0)
    const after = execFileSync('losetup', ['-o', String(part), '-f', '--show', img], { encoding: 'utf8' }).trim()
    try {
      expect(execFileSync('debugfs', ['-R', 'ls -l /', after], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })).toMatch(/MARKER/)
      expect(spawnSync('e2fsck', ['-fn', after]).status).toBe(0)
    } finally {
      spawnSync('losetup', ['-d', after])
    }
  }, 180_000)
})
