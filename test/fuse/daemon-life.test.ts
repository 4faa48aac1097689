// The daemon's life seen from outside (issue 16, items 4-6): one daemon per
// store and per SSD store; CLI commands when the daemon dies under them;
// `vmdi-fuse umount` while the unmount destage runs.
import { execFileSync, spawn, spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CLI, runCli } from '../helpers/cli'
import { isMounted, mount, tmpdir } from '../helpers/mount'

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
