// A mount whose handlers do no I/O: the ceiling of the FUSE binding itself,
// with the same binding, the same libfuse options and the same op table shape
// as vmdi-fuse. One file, /null.img, of SIZE bytes: reads return zeros,
// writes are acknowledged and dropped. Like vmdi-fuse's pass-through files,
// its file handle is on the binding's direct path, bound to /dev/zero (reads
// give zeros, writes are discarded), so the ceiling is that of the path our
// mount really takes; `--js` keeps reads and writes in the JS handlers below
// instead. usage: node nullfs.js MOUNTPOINT SIZE [--js]
import fs from 'fs'
import { FIXED_OPTIONS } from '../src/fuse/options'
import { loadFuseBinding } from '../src/fuse/preflight'

const [mnt, sizeArg, mode] = process.argv.slice(2)
const FH = 7
const SIZE = Number(sizeArg)
const Fuse = loadFuseBinding()
const t = new Date()
const st = (mode: number, size: number, ino: number) => ({ mode, size, ino, nlink: 1, uid: 0, gid: 0, mtime: t, atime: t, ctime: t, blksize: 4096, blocks: Math.ceil(size / 512) })
const E_NOENT = -2
const fuse = new Fuse(
  mnt,
  {
    getattr: (p: string, cb: (...a: unknown[]) => void) =>
      p === '/' ? cb(0, st(0o40755, 4096, 1)) : p === '/null.img' ? cb(0, st(0o100644, SIZE, 2)) : cb(E_NOENT),
    fgetattr: (p: string, _fh: number, cb: (...a: unknown[]) => void) => cb(0, st(0o100644, SIZE, 2)),
    readdir: (_p: string, cb: (...a: unknown[]) => void) => cb(0, ['null.img']),
    open: (_p: string, flags: number, cb: (...a: unknown[]) => void) => cb(0, FH, flags & 0o40000 ? 1 : 0),
    release: (_p: string, _fh: number, cb: (...a: unknown[]) => void) => cb(0),
    flush: (_p: string, _fh: number, cb: (...a: unknown[]) => void) => cb(0),
    fsync: (_p: string, _d: number, _fh: number, cb: (...a: unknown[]) => void) => cb(0),
    truncate: (_p: string, _s: number, cb: (...a: unknown[]) => void) => cb(0),
    ftruncate: (_p: string, _fh: number, _s: number, cb: (...a: unknown[]) => void) => cb(0),
    read: (_p: string, _fh: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) => {
      const n = Math.max(0, Math.min(len, SIZE - pos))
      buf.fill(0, 0, n)
      setImmediate(cb, n) // answer asynchronously, like a handler that did I/O
    },
    write: (_p: string, _fh: number, _buf: Buffer, len: number, _pos: number, cb: (n: number) => void) => setImmediate(cb, len),
  },
  {
    allowOther: true,
    defaultPermissions: true,
    timeout: false,
    extraOptions: FIXED_OPTIONS.filter(([o]) => o !== 'allow_other' && o !== 'default_permissions').map(([o]) => o).concat('subtype=vmdi-nullfs'),
  },
)
fuse.mount((err) => {
  if (err) {
    console.error(`nullfs: mount on ${mnt} failed: ${err.message}`)
    process.exit(1)
  }
  if (mode !== '--js') fuse.setDirect(FH, fs.openSync('/dev/zero', 'r+'))
  console.log('ready')
})
process.on('SIGTERM', () => Fuse.unmount(mnt, () => process.exit(0)))
