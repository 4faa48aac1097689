// fstab: `mount -T FSTAB MOUNTPOINT` through /sbin/mount.fuse.vmdi-fuse (linked
// by scripts/setup.sh), the -o keys mapped to the CLI's options; `umount` ends
// the daemon; an unknown key is one line and nothing is mounted.
import { afterAll, describe, expect, it } from 'vitest'
import { spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { ROOT } from '../helpers/cli'
import { status } from '../helpers/control'
import { isMounted, testDirs, tmpdir, waitFor } from '../helpers/mount'
import { pidAlive } from '../../src/fuse/runtime'

const base = tmpdir('vmdi-fstab-')
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

function run(cmd: string, args: string[]) {
  return spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000, env: { ...process.env, VMDI_STATE_DIR: path.join(base, 'state') } })
}

describe('fstab', () => {
  it('the helper is installed where mount(8) looks for fuse.vmdi-fuse', () => {
    expect(fs.realpathSync('/sbin/mount.fuse.vmdi-fuse'), 'run scripts/setup.sh').toBe(path.join(ROOT, 'scripts', 'mount.fuse.vmdi-fuse'))
  })

  it('mount -T mounts with the mapped options; umount ends the daemon', async () => {
    const d = testDirs(base, 'ok')
    fs.mkdirSync(d.mnt)
    fs.writeFileSync(path.join(d.store, 'a.txt'), 'through fstab\n')
    const ssd = path.join(base, 'ssd', 'v.sqlite')
    const log = path.join(base, 'ok.log')
    const fstab = path.join(base, 'fstab-ok')
    fs.writeFileSync(fstab, `# test\n${d.store}  ${d.mnt}  fuse.vmdi-fuse  defaults,ssd=${ssd},ram-cache=64M,nfs,_netdev,noatime,log=${log},x-systemd.automount 0 0\n`)
    const r = run('mount', ['-T', fstab, d.mnt])
    expect(r.stderr).toBe('')
    expect(r.status).toBe(0)
    expect(isMounted(d.mnt)).toBe(true)
    expect(fs.readFileSync(path.join(d.mnt, 'a.txt'), 'utf8')).toBe('through fstab\n')
    const st = status(d.mnt)
    expect(st.options).toContain('noforget') // nfs
    expect(fs.existsSync(ssd)).toBe(true) // ssd=
    expect(fs.readFileSync(log, 'utf8')).toMatch(/RAM cache 64 MiB/) // ram-cache=, log=
    const mounts = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === d.mnt)!
    expect(mounts.split(' ')[2]).toBe('fuse.vmdi-fuse')
    expect(mounts.split(' ')[3].split(',')).toContain('noatime')
    const u = run('umount', [d.mnt])
    expect(u.status).toBe(0)
    await waitFor(() => !pidAlive(st.pid), 30_000, 'the daemon to exit')
    expect(isMounted(d.mnt)).toBe(false)
  })

  it('an unknown key is refused in one line and nothing is mounted', () => {
    const d = testDirs(base, 'bad')
    fs.mkdirSync(d.mnt)
    const fstab = path.join(base, 'fstab-bad')
    fs.writeFileSync(fstab, `${d.store} ${d.mnt} fuse.vmdi-fuse ram-cache=64M,ssd-size=1G 0 0\n`)
    const r = run('mount', ['-T', fstab, d.mnt])
    expect(r.status).not.toBe(0)
    const lines = r.stderr.trim().split('\n')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/^vmdi-fuse: fstab option ssd-size=1G is not a vmdi-fuse option: use nfs, .*; nothing is mounted$/)
    expect(isMounted(d.mnt)).toBe(false)
    // A key the CLI's -o refuses (a libfuse option we never pass) is refused the same way.
    fs.writeFileSync(fstab, `${d.store} ${d.mnt} fuse.vmdi-fuse allow_root 0 0\n`)
    const r2 = run('mount', ['-T', fstab, d.mnt])
    expect(r2.status).not.toBe(0)
    expect(r2.stderr.trim().split('\n')).toHaveLength(1)
    expect(isMounted(d.mnt)).toBe(false)
  })
})
