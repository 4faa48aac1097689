// The mount's command line: every bad input gets one line naming the thing
// and the fix, a non-zero exit and nothing left mounted; the daemon's
// lifecycle ends cleanly whoever ends it; slow stores and NFS file handles.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ChildProcess, execFileSync, spawn, spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { CLI, runCli, ROOT } from '../helpers/cli'
import { status } from '../helpers/control'
import { exitWithin, isMounted, mount, tmpdir, waitFor } from '../helpers/mount'
import { pidAlive } from '../../src/fuse/runtime'

let base: string
let store: string
let mnt: string

beforeAll(() => {
  base = tmpdir()
  store = path.join(base, 'store')
  mnt = path.join(base, 'mnt')
  fs.mkdirSync(store)
  fs.mkdirSync(mnt)
  fs.writeFileSync(path.join(store, 'disk.img'), 'not really a disk')
})

afterAll(() => {
  for (const d of fs.readdirSync(base)) {
    const p = path.join(base, d)
    if (isMounted(p)) spawnSync('fusermount', ['-u', '-z', p])
  }
  fs.rmSync(base, { recursive: true, force: true })
})

function expectRefused(args: string[], message: RegExp, opts: { status?: number; env?: NodeJS.ProcessEnv; mountedBefore?: boolean } = {}): void {
  const r = runCli(['-f', ...args], { env: { ...process.env, ...opts.env } })
  expect(r.status, r.stderr).toBe(opts.status ?? 1)
  const lines = r.stderr.trim().split('\n')
  expect(lines).toHaveLength(1)
  expect(lines[0]).toMatch(/^vmdi-fuse: /)
  expect(lines[0]).toMatch(message)
  if (!opts.mountedBefore) for (const a of args) if (fs.existsSync(a) && fs.statSync(a).isDirectory()) expect(isMounted(a)).toBe(false)
}

describe('bad input: one line, the thing and the fix, non-zero exit, nothing mounted', () => {
  it('refuses a missing store, a file as store, an unreadable store', () => {
    expectRefused([path.join(base, 'nope'), mnt], /store .*nope does not exist: create it/)
    expectRefused([path.join(store, 'disk.img'), mnt], /store .*disk\.img is not a directory/)
    const locked = path.join(base, 'locked')
    fs.mkdirSync(locked, { mode: 0o700 })
    fs.chmodSync(base, 0o755)
    const r = spawnSync(process.execPath, [CLI, '-f', locked, mnt], { uid: 65534, gid: 65534, encoding: 'utf8' })
    expect(r.status).toBe(1)
    expect(r.stderr.trim()).toMatch(/^vmdi-fuse: store .*locked is not readable \(EACCES\)/)
  })

  it('refuses a bad mount point: missing, a file, inside the store, containing the store, the store itself, not empty', () => {
    expectRefused([store, path.join(base, 'nomnt')], /mount point .*nomnt does not exist: create it \(mkdir -p/)
    expectRefused([store, path.join(store, 'disk.img')], /mount point .*disk\.img is not a directory/)
    fs.mkdirSync(path.join(store, 'inner'), { recursive: true })
    expectRefused([store, path.join(store, 'inner')], /mount point .*inner is inside the store/)
    fs.mkdirSync(path.join(base, 'outer', 'st'), { recursive: true })
    expectRefused([path.join(base, 'outer', 'st'), path.join(base, 'outer')], /store .* is inside the mount point/)
    expectRefused([store, store], /is the store itself/)
    const full = path.join(base, 'full')
    fs.mkdirSync(full)
    fs.writeFileSync(path.join(full, 'x'), 'x')
    expectRefused([store, full], /mount point .*full is not empty .*-o nonempty/)
    fs.rmSync(path.join(store, 'inner'), { recursive: true })
  })

  it('refuses unknown and forbidden -o options before anything is mounted', () => {
    expectRefused(['-o', 'big_writes,frobnicate', store, mnt], /unknown mount option "-o frobnicate": nothing was mounted/, { status: 2 })
    expectRefused(['-o', 'umask=0', store, mnt], /-o umask is not accepted/, { status: 2 })
    expectRefused(['-o', 'attr_timeout=soon', store, mnt], /attr_timeout needs a valid value/, { status: 2 })
  })

  it('refuses an already mounted mount point, and clears a stale one only with --force', async () => {
    const m = await mount(store, mnt)
    expectRefused([store, mnt], /mount point .* is already a mount point \(fuse\.vmdi-fuse .*vmdi-fuse umount/, { mountedBefore: true })
    // A daemon killed with -9 leaves "Transport endpoint is not connected" behind.
    m.proc.kill('SIGKILL')
    await m.exited
    expect(() => fs.readdirSync(mnt)).toThrow(/ENOTCONN/)
    expectRefused([store, mnt], /stale FUSE mount left by a daemon that died .*fusermount -u -z .*--force/, { mountedBefore: true })
    const again = await mount(store, mnt, ['--force'])
    expect(fs.readFileSync(path.join(mnt, 'disk.img'), 'utf8')).toBe('not really a disk')
    expect(await again.stop()).toBe(0)
  })

  it('names /dev/fuse when it is missing or not the FUSE device', () => {
    const script = (setup: string) =>
      spawnSync('unshare', ['-m', 'sh', '-c', `${setup} && exec "${process.execPath}" "${CLI}" -f "${store}" "${mnt}"`], { encoding: 'utf8' })
    const fake = path.join(base, 'fakefuse')
    fs.writeFileSync(fake, '')
    let r = script(`mount --bind ${fake} /dev/fuse`)
    expect(r.status).toBe(1)
    expect(r.stderr.trim()).toMatch(/^vmdi-fuse: \/dev\/fuse is not the FUSE device \(character device 10:229\).*modprobe fuse/)
    r = script('mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3')
    expect(r.status).toBe(1)
    expect(r.stderr.trim()).toMatch(/^vmdi-fuse: \/dev\/fuse is missing: load the FUSE kernel module \(modprobe fuse\)/)
    expect(isMounted(mnt)).toBe(false)
  })

  it('names libfuse2 when libfuse.so.2 cannot be loaded', () => {
    const lib = fs.realpathSync('/lib/x86_64-linux-gnu/libfuse.so.2')
    const empty = path.join(base, 'emptylib')
    fs.writeFileSync(empty, '')
    const r = spawnSync('unshare', ['-m', 'sh', '-c', `mount --bind ${empty} ${lib} && exec "${process.execPath}" "${CLI}" -f "${store}" "${mnt}"`], {
      encoding: 'utf8',
    })
    expect(r.status).toBe(1)
    expect(r.stderr.trim()).toMatch(/^vmdi-fuse: libfuse\.so\.2 is missing or unusable .*apt-get install --reinstall libfuse2/)
  })

  it('prints help that explains every option, and the version', () => {
    const h = runCli(['--help'])
    expect(h.status).toBe(0)
    for (const o of ['--foreground', '--options', '--nfs', '--force', '--log', '--debug', 'umount', 'status', 'big_writes', 'allow_other']) {
      expect(h.stdout).toContain(o)
    }
    const v = runCli(['--version'])
    expect(v.stdout.trim()).toBe(JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version)
  })
})

describe('lifecycle', () => {
  it('detaches once mounted, and umount waits for the daemon to exit', async () => {
    const log = path.join(base, 'daemon.log')
    const r = runCli([store, mnt, '--log', log])
    expect(r.status, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/mounted .* on .* \(daemon pid (\d+), log /)
    const pid = Number(/pid (\d+)/.exec(r.stdout)![1])
    expect(isMounted(mnt)).toBe(true)
    expect(fs.readFileSync(path.join(mnt, 'disk.img'), 'utf8')).toBe('not really a disk')
    const st = status(mnt)
    expect(st.pid).toBe(pid)
    expect(st.store).toBe(fs.realpathSync(store))
    const u = runCli(['umount', mnt])
    expect(u.status, u.stderr).toBe(0)
    expect(isMounted(mnt)).toBe(false)
    expect(pidAlive(pid)).toBe(false) // gone, or a zombie waiting for init to reap it
    expect(fs.readFileSync(log, 'utf8')).toMatch(/the mount was removed; 0 open file\(s\) closed; exiting/)
  })

  for (const how of ['SIGINT', 'SIGTERM', 'fusermount -u'] as const) {
    it(`ends cleanly with exit status 0 on ${how}`, async () => {
      const m = await mount(store, mnt)
      fs.readFileSync(path.join(mnt, 'disk.img'))
      if (how === 'fusermount -u') execFileSync('fusermount', ['-u', mnt])
      else m.proc.kill(how)
      expect(await exitWithin(m, 60_000)).toBe(0)
      expect(isMounted(mnt)).toBe(false)
    })
  }

  it('lets an operation in flight finish when SIGTERM arrives, then exits 0', async () => {
    const slowStore = path.join(base, 'slowstore')
    fs.mkdirSync(path.join(slowStore, 'slow'), { recursive: true })
    const slow = await startSlowFs(path.join(slowStore, 'slow'), 3000)
    const m = await mount(slowStore, path.join(base, 'slowmnt'))
    try {
      const reader = readWith(path.join(m.mnt, 'slow', 'slow.bin'), 4096, 8192)
      await new Promise((r) => setTimeout(r, 1000))
      m.proc.kill('SIGTERM')
      const bytes = await reader
      for (let i = 0; i < bytes.length; i++) expect(bytes[i]).toBe((8192 + i) & 255)
      expect(await m.exited).toBe(0)
    } finally {
      slow.kill('SIGTERM')
    }
  })
})

describe('the binding timeout', () => {
  it('answers a read that waits 17 s on the store with the right bytes (fuse-native would have answered ETIMEDOUT at 15 s)', async () => {
    const slowStore = path.join(base, 'slowstore2')
    fs.mkdirSync(path.join(slowStore, 'slow'), { recursive: true })
    const slow = await startSlowFs(path.join(slowStore, 'slow'), 17_000)
    const m = await mount(slowStore, path.join(base, 'slowmnt2'))
    try {
      const bytes = await readWith(path.join(m.mnt, 'slow', 'slow.bin'), 65536, 131072)
      expect(bytes.length).toBe(65536)
      for (let i = 0; i < bytes.length; i += 997) expect(bytes[i]).toBe((131072 + i) & 255)
      expect(m.log()).toMatch(/slow operation: read \/slow\/slow\.bin has waited \d+ s for the store/)
    } finally {
      expect(await m.stop()).toBe(0)
      slow.kill('SIGTERM')
    }
  }, 90_000)
})

describe('NFS re-export (--nfs)', () => {
  it('keeps file handles valid across dropped dentry and inode caches', async () => {
    fs.mkdirSync(path.join(store, 'vm1'), { recursive: true })
    fs.writeFileSync(path.join(store, 'vm1', 'disk-flat.vmdk'), 'guest bytes')
    const m = await mount(store, mnt, ['--nfs'])
    try {
      expect(status(mnt).options).toContain('noforget')
      const py = `
import ctypes, ctypes.util, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class FH(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]
mnt, path = sys.argv[1], sys.argv[2]
fh = FH(); fh.handle_bytes = 128
mount_id = ctypes.c_int()
if libc.name_to_handle_at(-100, path.encode(), ctypes.byref(fh), ctypes.byref(mount_id), 0) != 0:
    sys.exit("name_to_handle_at: " + os.strerror(ctypes.get_errno()))
os.sync()
open("/proc/sys/vm/drop_caches", "w").write("2\\n")
mfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), os.O_RDONLY)
if fd < 0:
    sys.exit("open_by_handle_at: " + os.strerror(ctypes.get_errno()))
print(os.read(fd, 100).decode())
`
      const r = spawnSync('python3', ['-c', py, mnt, path.join(mnt, 'vm1', 'disk-flat.vmdk')], { encoding: 'utf8' })
      expect(r.stderr).toBe('')
      expect(r.stdout.trim()).toBe('guest bytes')
    } finally {
      expect(await m.stop()).toBe(0)
    }
  })
})

function startSlowFs(dir: string, ms: number): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [path.join(ROOT, 'test', 'helpers', 'slowfs.js'), dir, String(ms)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
    p.stdout!.on('data', (d) => {
      if (String(d).includes('ready')) resolve(p)
    })
    p.on('exit', (c) => reject(new Error(`slowfs exited ${c}`)))
    void waitFor(() => false, 1).catch(() => undefined)
  })
}

/** Reads through O_DIRECT in a child process (no page cache, no blocking of this process). */
function readWith(file: string, len: number, pos: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const script = `const fs=require('fs');const fd=fs.openSync(process.argv[1],fs.constants.O_RDONLY|fs.constants.O_DIRECT);const b=Buffer.alloc(${len});const n=fs.readSync(fd,b,0,${len},${pos});process.stdout.write(b.subarray(0,n).toString('base64'))`
    const p = spawn(process.execPath, ['-e', script, file], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    p.stdout.on('data', (d) => (out += d))
    p.stderr.on('data', (d) => (err += d))
    p.on('exit', (c) => (c === 0 ? resolve(Buffer.from(out, 'base64')) : reject(new Error(`reader exited ${c}: ${err}`))))
  })
}
