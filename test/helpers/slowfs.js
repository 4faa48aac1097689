// A tiny FUSE file system for tests: one file, slow.bin (1 MiB, bytes i & 255),
// whose reads answer only after SLOW_MS. Used as a slow store under vmdi-fuse.
// usage: node slowfs.js MOUNTPOINT SLOW_MS
const Fuse = require('fuse-native')
const [mnt, slowMs] = process.argv.slice(2)
const SIZE = 1 << 20
const now = new Date()
const stat = (mode, size) => ({ mtime: now, atime: now, ctime: now, nlink: 1, size, mode, uid: 0, gid: 0, ino: mode & 0o40000 ? 1 : 2 })
const fuse = new Fuse(mnt, {
  getattr: (p, cb) => p === '/' ? cb(0, stat(0o40755, 4096)) : p === '/slow.bin' ? cb(0, stat(0o100644, SIZE)) : cb(Fuse.ENOENT),
  readdir: (p, cb) => cb(0, ['slow.bin']),
  open: (p, flags, cb) => cb(0, 42),
  release: (p, fd, cb) => cb(0),
  read: (p, fd, buf, len, pos, cb) => {
    setTimeout(() => {
      const n = Math.max(0, Math.min(len, SIZE - pos))
      for (let i = 0; i < n; i++) buf[i] = (pos + i) & 255
      cb(n)
    }, Number(slowMs))
  },
}, { timeout: false, allowOther: true })
fuse.mount((err) => {
  if (err) { console.error(err); process.exit(1) }
  console.log('ready')
})
process.on('SIGTERM', () => Fuse.unmount(mnt, () => process.exit(0)))
