// The mount exactly as the store (issue 16 items 1–3): paths as long as the
// store accepts relative to its root whatever the length of STORE's own path;
// every name of a hard-linked file showing the store's attributes at once
// (permission checks included); NFS-style file handles across a daemon restart
// resolving to the same file or failing with ESTALE, never to another file.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { mount, tmpdir } from '../helpers/mount'

let base: string

beforeAll(() => {
  base = tmpdir()
  fs.chmodSync(base, 0o755) // the nobody test walks through it
})

afterAll(() => {
  // rm walks with *at calls; fs.rmSync gives up on paths past PATH_MAX.
  spawnSync('rm', ['-rf', base])
})

function py(script: string, args: string[], opts: { cwd?: string } = {}): string {
  const r = spawnSync('python3', ['-c', script, ...args], { encoding: 'utf8', cwd: opts.cwd, timeout: 60_000 })
  if (r.status !== 0) throw new Error(`python3 failed (${r.status}): ${r.stderr}`)
  return r.stdout
}

// Relative to the root it is run in (cwd): a directory chain of 16 × 240
// characters, then per target length L names of L - 3840 characters; every
// operation on each, each outcome printed (ok or the errno name).
const LONG_OPS = `
import errno, json, os, sys
D = "/".join(["d%02d" % i + "x" * 236 for i in range(16)]) + "/"
assert len(D) == 3840
out = {}
def step(key, fn):
    try:
        v = fn()
        out[key] = "ok" if v is None else v
    except OSError as e:
        out[key] = errno.errorcode[e.errno]
if sys.argv[1] == "make":
    p = ""
    for part in D.strip("/").split("/"):
        p += part + "/"
        os.mkdir(p)
for L in [int(x) for x in sys.argv[2].split(",")]:
    n = L - len(D)
    f, g, s, q, h = (D + c + "a" * (n - 1) for c in "fgsqh")
    assert len(f) == L
    if sys.argv[1] == "make":
        def create():
            with open(f, "wb") as w: w.write(b"bytes of %d" % L)
        step("%d create+write" % L, create)
        step("%d read" % L, lambda: open(f, "rb").read().decode())
        step("%d chmod" % L, lambda: os.chmod(f, 0o640))
        step("%d utime" % L, lambda: os.utime(f, ns=(1000000123, 2000000456)))
        step("%d setxattr" % L, lambda: os.setxattr(f, "user.k", b"v%d" % L))
        step("%d rename" % L, lambda: os.rename(f, g))
        step("%d link" % L, lambda: os.link(g, h))
        step("%d unlink" % L, lambda: os.unlink(h))
        step("%d symlink" % L, lambda: os.symlink("target-%d" % L, s))
        step("%d mkfifo" % L, lambda: os.mkfifo(q, 0o600))
    for name, p in (("file", g), ("symlink", s), ("fifo", q), ("gone", f)):
        def look(p=p):
            st = os.lstat(p)
            return [st.st_mode, st.st_ino, st.st_nlink, st.st_uid, st.st_size, st.st_mtime_ns]
        step("%d %s stat" % (L, name), look)
    step("%d getxattr" % L, lambda: os.getxattr(g, "user.k").decode())
    step("%d listxattr" % L, lambda: sorted(os.listxattr(g)))
    step("%d readlink" % L, lambda: os.readlink(s))
    step("%d content" % L, lambda: open(g, "rb").read().decode())
print(json.dumps(out, sort_keys=True))
`

describe('long paths', () => {
  it('serves every path the store accepts relative to its root (up to 4,095 characters) under a 200-character STORE path', async () => {
    let store = path.join(base, 'long')
    while (store.length < 200) store = path.join(store, 's'.repeat(Math.min(60, 200 - store.length - 1) || 1))
    fs.mkdirSync(store, { recursive: true })
    const mnt = path.join(base, 'long-mnt')
    const m = await mount(store, mnt)
    try {
      const lengths = '4000,4080,4090,4094,4095'
      const made = JSON.parse(py(LONG_OPS, ['make', lengths], { cwd: mnt })) as Record<string, unknown>
      const failed = Object.entries(made).filter(([k, v]) => v !== 'ok' && !/stat|read|getxattr|listxattr|readlink|content/.test(k))
      expect(failed).toEqual([])
      expect(made['4095 content']).toBe('bytes of 4095')
      expect(made['4095 gone stat']).toBe('ENOENT')
      const seenByMount = JSON.parse(py(LONG_OPS, ['look', lengths], { cwd: mnt }))
      const seenByStore = JSON.parse(py(LONG_OPS, ['look', lengths], { cwd: store }))
      expect(seenByMount).toEqual(seenByStore)
      expect(seenByStore['4095 file stat']).toEqual([0o100640, expect.any(Number), 1, 0, 13, 2000000456])
      expect(seenByStore['4095 fifo stat'][0]).toBe(0o010600)
      expect(seenByStore['4095 getxattr']).toBe('v4095')
      expect(seenByStore['4095 readlink']).toBe('target-4095')
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 120_000)
})

/** The attributes a stat shows, bigint nanoseconds (atime left out: reads through either side move it). */
function attrs(p: string): string {
  const s = fs.lstatSync(p, { bigint: true })
  return `mode=${s.mode.toString(8)} uid=${s.uid} gid=${s.gid} size=${s.size} nlink=${s.nlink} ino=${s.ino} mtime=${s.mtimeNs} ctime=${s.ctimeNs}`
}

describe('hard links', () => {
  it('shows every name the store\'s attributes at once after a change through another name, and checks permissions on them', async () => {
    const store = path.join(base, 'links')
    fs.mkdirSync(store)
    const mnt = path.join(base, 'links-mnt')
    const m = await mount(store, mnt)
    const at = (n: string) => path.join(mnt, n)
    /** Every listed name, through the mount and on the store, right after a step. */
    const check = (step: string, names: string[]) => {
      for (const n of names) expect(`${step}: ${n} ${attrs(at(n))}`).toBe(`${step}: ${n} ${attrs(path.join(store, n))}`)
    }
    /** nobody reads a name: its content, or the errno. */
    const nobodyReads = (n: string) => {
      const r = spawnSync('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', 'cat', at(n)], { encoding: 'utf8' })
      return r.status === 0 ? r.stdout : r.stderr.includes('Permission denied') ? 'Permission denied' : `cat failed: ${r.stderr}`
    }
    try {
      fs.writeFileSync(at('a'), 'secret')
      fs.chmodSync(at('a'), 0o644)
      check('created', ['a'])
      fs.linkSync(at('a'), at('b'))
      check('link a b', ['a', 'b'])
      expect(nobodyReads('a')).toBe('secret')
      fs.chmodSync(at('b'), 0o600)
      check('chmod 600 b', ['a', 'b'])
      expect(nobodyReads('a')).toBe('Permission denied')
      fs.chmodSync(at('a'), 0o644)
      check('chmod 644 a', ['a', 'b'])
      expect(nobodyReads('b')).toBe('secret')
      fs.chownSync(at('b'), 65534, 65534)
      check('chown b', ['a', 'b'])
      fs.utimesSync(at('a'), new Date(1_000_000), new Date(2_000_000))
      check('utimens a', ['a', 'b'])
      fs.truncateSync(at('b'), 3)
      check('truncate b', ['a', 'b'])
      fs.appendFileSync(at('a'), 'more bytes')
      check('write a', ['a', 'b'])
      expect(fs.readFileSync(at('b'), 'utf8')).toBe('secmore bytes')
      fs.linkSync(at('b'), at('c'))
      check('link b c', ['a', 'b', 'c'])
      fs.unlinkSync(at('a'))
      check('unlink a', ['b', 'c'])
      fs.unlinkSync(at('c'))
      check('unlink c', ['b'])
      fs.linkSync(at('b'), at('d'))
      fs.chownSync(at('d'), 0, 0)
      check('chown d', ['b', 'd'])
      expect(nobodyReads('b')).toBe('secmore bytes')
      fs.chmodSync(at('d'), 0o600)
      expect(nobodyReads('b')).toBe('Permission denied')
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 60_000)
})

// name_to_handle_at of every name given (hex), or open_by_handle_at of each
// handle given and its first bytes (or the errno name), as knfsd does.
const HANDLES = `
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class FH(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]
mnt, mode, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {}
if mode == "take":
    for name in args:
        fh = FH(); fh.handle_bytes = 128
        mount_id = ctypes.c_int()
        if libc.name_to_handle_at(-100, os.path.join(mnt, name).encode(), ctypes.byref(fh), ctypes.byref(mount_id), 0) != 0:
            sys.exit("name_to_handle_at: " + os.strerror(ctypes.get_errno()))
        out[name] = [fh.handle_type, bytes(fh.f_handle[:fh.handle_bytes]).hex()]
else:
    os.sync()
    open("/proc/sys/vm/drop_caches", "w").write("2\\n")
    mfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    for name, (htype, hexbytes) in args.items():
        raw = bytes.fromhex(hexbytes)
        fh = FH(); fh.handle_bytes = len(raw); fh.handle_type = htype
        ctypes.memmove(fh.f_handle, raw, len(raw))
        fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), os.O_RDONLY)
        if fd < 0:
            out[name] = errno.errorcode[ctypes.get_errno()]
        else:
            out[name] = os.read(fd, 100).decode()
            os.close(fd)
print(json.dumps(out))
`

describe('file handles across a daemon restart', () => {
  it('resolve to the same file or fail with ESTALE, never to another file (an inode number reused in between)', async () => {
    const store = path.join(base, 'handles')
    fs.mkdirSync(store)
    const mnt = path.join(base, 'handles-mnt')
    const names = ['vm1.img', 'vm2.qcow2', 'hello.txt', 'gone.txt']
    for (const n of names) fs.writeFileSync(path.join(store, n), `bytes of ${n}`)
    let m = await mount(store, mnt, ['--nfs'])
    let handles: Record<string, [number, string]>
    try {
      for (const n of names) fs.statSync(path.join(mnt, n)) // node ids in this order
      handles = JSON.parse(py(HANDLES, [mnt, 'take', JSON.stringify(names)]))
      // Within one daemon, every handle opens its own file.
      const same = JSON.parse(py(HANDLES, [mnt, 'open', JSON.stringify(handles)]))
      for (const n of names) expect(same[n]).toBe(`bytes of ${n}`)
    } finally {
      expect(await m.stop()).toBe(0)
    }
    const goneIno = fs.statSync(path.join(store, 'gone.txt')).ino
    fs.unlinkSync(path.join(store, 'gone.txt'))
    fs.writeFileSync(path.join(store, 'new.txt'), 'bytes of new.txt')
    const reused = fs.statSync(path.join(store, 'new.txt')).ino === goneIno
    m = await mount(store, mnt, ['--nfs'])
    try {
      // The new daemon hands its node ids out in another order.
      for (const n of ['new.txt', 'hello.txt', 'vm2.qcow2', 'vm1.img']) fs.statSync(path.join(mnt, n))
      const after = JSON.parse(py(HANDLES, [mnt, 'open', JSON.stringify(handles)]))
      for (const n of names) expect([`bytes of ${n}`, 'ESTALE'], `${n} (inode number reused: ${reused})`).toContain(after[n])
      expect(after['gone.txt']).toBe('ESTALE')
    } finally {
      expect(await m.stop()).toBe(0)
    }
  }, 120_000)
})
