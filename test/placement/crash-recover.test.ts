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
