// Every operation through a real mount, compared with the same operation on
// a plain twin directory (same results, same errno) and with the store
// underneath (same bytes, same stat fields to the nanosecond, same xattrs).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFileSync, spawnSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { mount, Mounted, tmpdir } from '../helpers/mount'

let m: Mounted
let twin: string
let base: string

beforeAll(async () => {
  base = tmpdir()
  fs.chmodSync(base, 0o755) // the second-uid test walks through it
  const store = path.join(base, 'store')
  twin = path.join(base, 'twin')
  fs.mkdirSync(store)
  fs.mkdirSync(twin)
  m = await mount(store, path.join(base, 'mnt'))
})

afterAll(async () => {
  const code = await m?.stop()
  expect(code).toBe(0)
  fs.rmSync(base, { recursive: true, force: true })
})

/** Runs fn on a root (mount or twin) and reports its value or its error code. */
function outcome(root: string, fn: () => unknown): unknown {
  try {
    const v = fn()
    return { ok: v === undefined ? null : Buffer.isBuffer(v) ? v.toString() : v }
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { status?: number; stderr?: Buffer | string }
    if (typeof err.status === 'number') return { status: err.status, stderr: String(err.stderr ?? '').split(root).join('ROOT') }
    return { err: err.code ?? String(e) }
  }
}

/** The same step on the twin and through the mount must give the same result. */
function same(step: (root: string) => unknown): unknown {
  const a = outcome(twin, () => step(twin))
  const b = outcome(m.mnt, () => step(m.mnt))
  expect(b).toEqual(a)
  return b
}

function xattrs(p: string): Record<string, string> {
  const r = spawnSync('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', p], { encoding: 'utf8' })
  const out: Record<string, string> = {}
  for (const line of r.stdout.split('\n')) {
    const i = line.indexOf('=')
    if (i > 0 && !line.startsWith('#')) out[line.slice(0, i)] = line.slice(i + 1)
  }
  return out
}

/** Everything observable about one entry, as seen at `p`. */
function describeEntry(p: string, withIno: boolean): Record<string, unknown> {
  const st = fs.lstatSync(p, { bigint: true })
  const d: Record<string, unknown> = {
    mode: st.mode,
    nlink: st.nlink,
    uid: st.uid,
    gid: st.gid,
    size: st.size,
    blocks: st.blocks,
    mtimeNs: st.mtimeNs,
    atimeNs: st.atimeNs,
    ctimeNs: st.ctimeNs,
    xattrs: xattrs(p),
  }
  if (withIno) d.ino = st.ino
  if (st.isFile()) d.sha = crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex')
  if (st.isSymbolicLink()) d.target = fs.readlinkSync(p)
  if (st.isDirectory()) d.names = fs.readdirSync(p).sort()
  return d
}

function tree(root: string): string[] {
  const out: string[] = []
  const walk = (rel: string) => {
    for (const n of fs.readdirSync(path.join(root, rel)).sort()) {
      const r = path.join(rel, n)
      out.push(r)
      if (fs.lstatSync(path.join(root, r)).isDirectory()) walk(r)
    }
  }
  walk('')
  return out
}

describe('operations through the mount equal the same operations on the store', () => {
  it('performs every operation with the store semantics and errnos', () => {
    const W = (root: string, rel: string) => path.join(root, rel)
    same((r) => fs.mkdirSync(W(r, 'd'), { mode: 0o750 }))
    same((r) => fs.mkdirSync(W(r, 'd'))) // EEXIST
    same((r) => fs.writeFileSync(W(r, 'd/f'), 'hello world'))
    same((r) => fs.readFileSync(W(r, 'd/f'), 'utf8'))
    same((r) => {
      const fd = fs.openSync(W(r, 'd/f'), 'r+')
      try {
        fs.writeSync(fd, Buffer.from('XY'), 0, 2, 100_000) // a hole, then bytes
        fs.writeSync(fd, Buffer.from('ab'), 0, 2, 3)
        const b = Buffer.alloc(20)
        const n = fs.readSync(fd, b, 0, 20, 0)
        fs.fsyncSync(fd)
        fs.fdatasyncSync(fd)
        fs.ftruncateSync(fd, 50_000)
        return [n, b.toString('hex'), fs.fstatSync(fd).size]
      } finally {
        fs.closeSync(fd)
      }
    })
    same((r) => fs.appendFileSync(W(r, 'd/f'), 'tail'))
    same((r) => fs.truncateSync(W(r, 'd/f'), 70_000))
    same((r) => fs.truncateSync(W(r, 'd/missing'), 1)) // ENOENT
    same((r) => fs.chmodSync(W(r, 'd/f'), 0o640))
    same((r) => fs.chownSync(W(r, 'd/f'), 1234, 5678))
    same((r) => execFileSync('touch', ['-d', '2001-02-03 04:05:06.123456789', W(r, 'd/f')]))
    same((r) => execFileSync('touch', ['-m', '-d', '2011-12-13 14:15:16.987654321', W(r, 'd/f')])) // mtime only
    same((r) => fs.symlinkSync('d/f', W(r, 'ln')))
    same((r) => fs.symlinkSync('x'.repeat(300), W(r, 'longln')))
    same((r) => fs.readlinkSync(W(r, 'ln')))
    same((r) => fs.readlinkSync(W(r, 'd'))) // EINVAL
    same((r) => execFileSync('touch', ['-h', '-d', '1999-01-01 00:00:00.5', W(r, 'ln')])) // the link itself
    same((r) => fs.linkSync(W(r, 'd/f'), W(r, 'hard')))
    same((r) => fs.lstatSync(W(r, 'hard')).nlink)
    same((r) => fs.writeFileSync(W(r, 'g'), 'gee'))
    same((r) => fs.renameSync(W(r, 'g'), W(r, 'g2')))
    same((r) => fs.writeFileSync(W(r, 'victim'), 'old'))
    same((r) => fs.renameSync(W(r, 'g2'), W(r, 'victim'))) // over an existing target
    same((r) => fs.readFileSync(W(r, 'victim'), 'utf8'))
    same((r) => fs.renameSync(W(r, 'nope'), W(r, 'x'))) // ENOENT
    same((r) => fs.unlinkSync(W(r, 'hard')))
    same((r) => fs.unlinkSync(W(r, 'hard'))) // ENOENT
    same((r) => fs.rmdirSync(W(r, 'd'))) // ENOTEMPTY
    same((r) => fs.mkdirSync(W(r, 'e')))
    same((r) => fs.rmdirSync(W(r, 'e')))
    same((r) => execFileSync('mkfifo', ['-m', '0640', W(r, 'fifo')]))
    same((r) => fs.lstatSync(W(r, 'fifo')).isFIFO())
    same((r) => execFileSync('setfattr', ['-n', 'user.color', '-v', 'blue', W(r, 'd/f')]))
    same((r) => execFileSync('setfattr', ['-n', 'user.gone', '-v', '0x00ff', W(r, 'd/f')]))
    same((r) => execFileSync('setfattr', ['-x', 'user.gone', W(r, 'd/f')]))
    same((r) => execFileSync('getfattr', ['-n', 'user.missing', W(r, 'd/f')], { stdio: 'pipe' })) // ENODATA → status 1
    same((r) => xattrs(W(r, 'd/f')))
    same((r) => {
      fs.accessSync(W(r, 'd/f'), fs.constants.R_OK | fs.constants.W_OK)
      return 'accessible'
    })
    same((r) => fs.readdirSync(r).sort())
    same((r) => {
      const fd = fs.openSync(W(r, 'd'), 'r')
      try {
        fs.fsyncSync(fd) // fsyncdir
      } finally {
        fs.closeSync(fd)
      }
    })
    same((r) => {
      const fd = fs.openSync(W(r, 'd/f'), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW)
      fs.closeSync(fd)
      return fd > 0
    })
    same((r) => fs.openSync(W(r, 'ln'), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW)) // ELOOP
    same((r) => fs.writeFileSync(W(r, 'excl'), 'x', { flag: 'wx' }))
    same((r) => fs.writeFileSync(W(r, 'excl'), 'x', { flag: 'wx' })) // EEXIST

    // The store holds exactly what the twin holds (names, types, bytes, modes,
    // owners, times to the nanosecond, xattrs, link targets).
    expect(tree(m.store)).toEqual(tree(twin))
    for (const rel of tree(twin)) {
      const t = describeEntry(path.join(twin, rel), false)
      const s = describeEntry(path.join(m.store, rel), false)
      // Times of entries nobody set explicitly differ by when each side ran.
      const keys = ['ctimeNs', 'atimeNs', 'blocks', ...(['d/f', 'ln'].includes(rel) ? [] : ['mtimeNs'])]
      for (const k of keys) {
        delete t[k]
        delete s[k]
      }
      expect({ rel, ...s }).toEqual({ rel, ...t })
    }
  })

  it('shows every stat field of the store unchanged, to the nanosecond, inode numbers included', () => {
    for (const rel of tree(m.store)) {
      // The kernel may cache attributes for attr_timeout: stat what we just listed.
      const viaMount = describeEntry(path.join(m.mnt, rel), true)
      const direct = describeEntry(path.join(m.store, rel), true)
      // Reading a file through the mount updates atime on the store: compare after both reads.
      delete viaMount.atimeNs
      delete direct.atimeNs
      delete viaMount.ctimeNs
      delete direct.ctimeNs
      expect({ rel, ...viaMount }).toEqual({ rel, ...direct })
    }
    const a = fs.lstatSync(path.join(m.mnt, 'd/f'), { bigint: true })
    expect(a.mtimeNs).toBe(1323785716987654321n) // 2011-12-13 14:15:16.987654321 UTC
    expect(a.mtimeNs % 1000n).toBe(321n)
  })

  it('keeps atime and mtime apart (fuse-native passed atime twice)', () => {
    const f = path.join(m.mnt, 'times')
    fs.writeFileSync(f, 't')
    execFileSync('touch', ['-a', '-d', '2003-03-03 03:03:03.000000003', f])
    execFileSync('touch', ['-m', '-d', '2004-04-04 04:04:04.000000004', f])
    const st = fs.lstatSync(path.join(m.store, 'times'), { bigint: true })
    expect(st.atimeNs % 1_000_000_000n).toBe(3n)
    expect(st.mtimeNs % 1_000_000_000n).toBe(4n)
    expect(st.atimeNs).not.toBe(st.mtimeNs)
  })

  it('reports the store file system in statfs', () => {
    const a = fs.statfsSync(m.mnt)
    const b = fs.statfsSync(m.store)
    expect(a.bsize).toBe(b.bsize)
    expect(a.blocks).toBe(b.blocks)
    expect(a.files).toBe(b.files)
    expect(Math.abs(a.bfree - b.bfree)).toBeLessThan(b.blocks / 100 + 1024)
  })

  it('opens with O_DIRECT (stripped towards the store) and reads back what it wrote', () => {
    const f = path.join(m.mnt, 'direct.img')
    fs.writeFileSync(f, Buffer.alloc(1 << 20))
    const fd = fs.openSync(f, fs.constants.O_RDWR | fs.constants.O_DIRECT)
    try {
      const buf = Buffer.alloc(65536, 0x5a)
      expect(fs.writeSync(fd, buf, 0, buf.length, 131072)).toBe(65536)
      const back = Buffer.alloc(65536)
      expect(fs.readSync(fd, back, 0, back.length, 131072)).toBe(65536)
      expect(back.equals(buf)).toBe(true)
    } finally {
      fs.closeSync(fd)
    }
    expect(fs.readFileSync(path.join(m.store, 'direct.img')).subarray(131072, 196608).every((b) => b === 0x5a)).toBe(true)
  })

  it('serves a file as a second uid exactly as the store allows it', () => {
    fs.writeFileSync(path.join(m.mnt, 'secret'), 'root only', { mode: 0o600 })
    fs.writeFileSync(path.join(m.mnt, 'public'), 'everyone', { mode: 0o644 })
    fs.chmodSync(path.join(m.mnt, 'secret'), 0o600)
    fs.chmodSync(path.join(m.mnt, 'public'), 0o644)
    const asNobody = (args: string[]) => spawnSync(args[0], args.slice(1), { uid: 65534, gid: 65534, encoding: 'utf8' })
    const denied = asNobody(['cat', path.join(m.mnt, 'secret')])
    expect(denied.status).not.toBe(0)
    expect(denied.stderr).toMatch(/Permission denied/)
    const allowed = asNobody(['cat', path.join(m.mnt, 'public')])
    expect(allowed.status).toBe(0)
    expect(allowed.stdout).toBe('everyone')
    // What nobody creates in a shared directory belongs to nobody in the store.
    fs.mkdirSync(path.join(m.mnt, 'shared'), { mode: 0o777 })
    fs.chmodSync(path.join(m.mnt, 'shared'), 0o777)
    expect(asNobody(['touch', path.join(m.mnt, 'shared', 'mine')]).status).toBe(0)
    expect(asNobody(['mkdir', path.join(m.mnt, 'shared', 'subdir')]).status).toBe(0)
    for (const n of ['mine', 'subdir']) {
      const st = fs.lstatSync(path.join(m.store, 'shared', n))
      expect([st.uid, st.gid]).toEqual([65534, 65534])
    }
    // ... and nobody cannot chmod root's file.
    expect(asNobody(['chmod', '666', path.join(m.mnt, 'public')]).status).not.toBe(0)
    expect(fs.statSync(path.join(m.store, 'public')).mode & 0o777).toBe(0o644)
  })

  it('never reaches outside the store: a symlink to /etc is served as a link, not followed by the daemon', () => {
    fs.symlinkSync('/etc/shadow', path.join(m.store, 'escape'))
    const st = fs.lstatSync(path.join(m.mnt, 'escape'))
    expect(st.isSymbolicLink()).toBe(true)
    expect(fs.readlinkSync(path.join(m.mnt, 'escape'))).toBe('/etc/shadow')
    // chown through the link name changes the link (lchown), not /etc/shadow.
    const before = fs.statSync('/etc/shadow')
    execFileSync('chown', ['-h', '4242:4242', path.join(m.mnt, 'escape')])
    expect(fs.lstatSync(path.join(m.store, 'escape')).uid).toBe(4242)
    expect(fs.statSync('/etc/shadow').uid).toBe(before.uid)
  })
})
