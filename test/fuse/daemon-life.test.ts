// The daemon's life seen from outside (issue 16, items 4-6): one daemon per
// store and per SSD store; CLI commands when the daemon dies under them;
// `vmdi-fuse umount` while the unmount destage runs.
import { execFileSync, spawn, spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CLI, runCli } from '../helpers/cli'
import { stats } from '../helpers/control'
import { isMounted, mount, tmpdir, waitFor, type Mounted } from '../helpers/mount'

let base = ''
beforeAll(() => {
  base = tmpdir('vmdi-daemon-life-')
})
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

describe('one daemon per store and per SSD store', () => {
  it('refuses a second daemon on the same store, and one on the same SSD store, naming the first one\'s pid and mount point', async () => {
    const dir = path.join(base, 'twice')
    const store = path.join(dir, 'store')
    const other = path.join(dir, 'other')
    fs.mkdirSync(store, { recursive: true })
    fs.mkdirSync(other, { recursive: true })
    const ssd = path.join(dir, 'ssd.sqlite')
    const m = await mount(store, path.join(dir, 'mnt'), ['--ssd', ssd])
    try {
      const env = { ...process.env, VMDI_STATE_DIR: path.join(dir, 'state') }
      fs.mkdirSync(path.join(dir, 'mnt2'))
      const same = runCli(['-f', '--ssd', path.join(dir, 'ssd2.sqlite'), store, path.join(dir, 'mnt2')], { env, timeout: 30_000 })
      expect(same.status).toBe(1)
      expect(same.stderr.trim().split('\n')).toHaveLength(1)
      expect(same.stderr).toMatch(new RegExp(`the store ${store} is already served by vmdi-fuse pid ${m.proc.pid} mounted on ${m.mnt}`))
      const sameSsd = runCli(['-f', '--ssd', ssd, other, path.join(dir, 'mnt2')], { env, timeout: 30_000 })
      expect(sameSsd.status).toBe(1)
      expect(sameSsd.stderr).toMatch(new RegExp(`the SSD store ${ssd} is already served by vmdi-fuse pid ${m.proc.pid} mounted on ${m.mnt}`))
      expect(isMounted(path.join(dir, 'mnt2'))).toBe(false)
    } finally {
      expect(await m.stop()).toBe(0)
    }
    // The lock goes with the daemon, also with a kill -9.
    const again = await mount(store, path.join(dir, 'mnt'), ['--ssd', ssd])
    again.proc.kill('SIGKILL')
    await again.exited
    spawnSync('fusermount', ['-u', '-z', again.mnt])
    const third = await mount(store, path.join(dir, 'mnt2'), ['--ssd', ssd])
    expect(await third.stop()).toBe(0)
  }, 120_000)
})

/** Days: the held blocks stay in the SSD store until a command writes them back. */
const NO_BACKGROUND_DESTAGE = { VMDI_DESTAGE_INTERVAL_MS: String(24 * 3600 * 1000) }

/** A mount on an emulated slow disk whose SSD store holds ~2,800 scattered new-data blocks of vm.img: a destage of seconds. */
async function heldBack(name: string): Promise<Mounted> {
  const dir = path.join(base, name)
  const store = path.join(dir, 'store')
  fs.mkdirSync(store, { recursive: true })
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', path.join(store, 'vm.img'), '128M'])
  const m = await mount(store, path.join(dir, 'mnt'), ['--emulate-hdd', 'laptop5400'], NO_BACKGROUND_DESTAGE)
  const fd = fs.openSync(path.join(m.mnt, 'vm.img'), 'r+')
  await waitFor(() => stats(m.mnt).images.some((i) => i.path === 'vm.img' && i.scan.state === 'done'), 60_000, 'the scan')
  const blk = Buffer.alloc(4096, 0x5a)
  for (let at = 32 << 20; at < 120 << 20; at += 32 << 10) fs.writeSync(fd, blk, 0, 4096, at) // free blocks: new data, held
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  expect(stats(m.mnt).ssd.dirtyBlocks).toBeGreaterThan(1000)
  return m
}

/** Runs the CLI in the background; resolves with its status, output and how long it took. */
function cliAsync(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string; ms: number }> {
  const t0 = Date.now()
  const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  p.stdout.on('data', (d) => (stdout += d))
  p.stderr.on('data', (d) => (stderr += d))
  return new Promise((res) => p.on('exit', (status) => res({ status, stdout, stderr, ms: Date.now() - t0 })))
}

describe('CLI commands when the daemon dies under them', () => {
  it('destage ends within seconds, non-zero, saying the daemon exited and naming the mount point and log', async () => {
    const m = await heldBack('destage-killed')
    const cmd = cliAsync(['destage', m.mnt])
    await new Promise((r) => setTimeout(r, 1500)) // the destage is under way (seconds on the emulated disk)
    m.proc.kill('SIGKILL')
    await m.exited
    const r = await Promise.race([cmd, new Promise<null>((res) => setTimeout(() => res(null), 20_000))])
    spawnSync('fusermount', ['-u', '-z', m.mnt])
    expect(r, 'vmdi-fuse destage still waits 20 s after the daemon died').not.toBeNull()
    expect(r!.status).not.toBe(0)
    expect(r!.stdout).toBe('')
    expect(r!.stderr).toMatch(new RegExp(`daemon of ${m.mnt} \\(pid ${m.proc.pid}\\) exited during the request`))
  }, 180_000)

  it('umount shows the destage\'s progress, and says the HDD files are not whole and what to run when the daemon dies during it', async () => {
    const m = await heldBack('umount-killed')
    const cmd = cliAsync(['umount', m.mnt])
    await new Promise((r) => setTimeout(r, 4000))
    m.proc.kill('SIGKILL')
    await m.exited
    const r = await Promise.race([cmd, new Promise<null>((res) => setTimeout(() => res(null), 20_000))])
    spawnSync('fusermount', ['-u', '-z', m.mnt])
    expect(r).not.toBeNull()
    expect(r!.stdout).not.toMatch(/unmounted/)
    expect(r!.status).not.toBe(0)
    expect(r!.stderr).toMatch(/writing back what the SSD store holds to the HDD files: \d+ block\(s\) left/)
    expect(r!.stderr).toMatch(/died during its unmount destage with [1-9]\d* block\(s\) still only in the SSD store .*: the HDD files are not whole .*mount the store again/)
  }, 180_000)
})

describe('vmdi-fuse umount --lazy', () => {
  it('detaches a busy mount at once, serves the open file until it is closed, then waits for the daemon to exit cleanly', async () => {
    const dir = path.join(base, 'lazy')
    const store = path.join(dir, 'store')
    fs.mkdirSync(store, { recursive: true })
    fs.writeFileSync(path.join(store, 'notes.txt'), 'still here\n'.repeat(1000))
    const m = await mount(store, path.join(dir, 'mnt'))
    const fd = fs.openSync(path.join(m.mnt, 'notes.txt'), 'r')
    const plain = runCli(['umount', m.mnt])
    expect(plain.status).not.toBe(0)
    expect(plain.stderr).toMatch(/is busy: .*fuser -vm .*umount --lazy/)
    const cmd = cliAsync(['umount', '--lazy', m.mnt])
    await waitFor(() => !isMounted(m.mnt), 10_000, 'the lazy detach')
    // Detached, and the open file is still served by the daemon.
    const buf = Buffer.alloc(11)
    expect(fs.readSync(fd, buf, 0, 11, 11 * 500)).toBe(11)
    expect(buf.toString()).toBe('still here\n')
    expect(m.proc.exitCode).toBeNull()
    fs.closeSync(fd)
    const r = await cmd
    expect(r.status, r.stderr).toBe(0)
    expect(r.ms).toBeLessThan(25_000) // ends once the file is closed, not at the 30 s grace
    expect(await m.exited).toBe(0)
  }, 60_000)
})
