// The pass-through file system: every operation performed on the STORE
// directory with the store's own semantics. Paths are mount-relative ("/a/b")
// and never contain "..": the kernel resolves names one component at a time.
// The daemon never follows a final symlink (lstat, O_NOFOLLOW, lchown,
// AT_SYMLINK_NOFOLLOW, l*xattr). Handlers throw Node fs errors or return a
// negative errno; src/fuse/ops.ts is the single errno boundary.
//
// File handles: `fh` numbers (uint32, from 1) index our own table; each holds
// the store fd. Lock order: none needed, the table is touched only on the
// Node main thread.

import fs from 'fs'
import path from 'path'
import { promisify } from 'util'
import { E } from './errno'
import { sys, UTIME_NOW, UTIME_OMIT } from '../native/sys'
import type { Datapath, ImageEntry } from '../placement/datapath'
import { log } from '../log'
import { OPEN_DIRECT_IO } from '../native/constants'

const fsp = fs.promises
// Calls on the fds our handle table holds (fs.promises works on FileHandles only).
const fstat = promisify(fs.fstat)
const ftruncate = promisify(fs.ftruncate)
const fsync = promisify(fs.fsync)
const fdatasync = promisify(fs.fdatasync)
const fchown = promisify(fs.fchown)
const fdOpen = promisify(fs.open)
const fdClose = promisify(fs.close)
const { O_DIRECT, O_NOFOLLOW, O_CREAT, O_EXCL } = fs.constants

/** Bits of the open reply (patched fuse-native): bypass the page cache / keep it. */

export interface Caller {
  uid: number
  gid: number
  pid: number
}

export interface OpenFile {
  fd: number
  /** Whether preadv2/pwritev2 with RWF_NOWAIT work on this file (cleared on EOPNOTSUPP). */
  nowaitRead: boolean
  nowaitWrite: boolean
  /** Mount-relative path at open time (renames are not tracked: informational). */
  path: string
  flags: number
  /** Registered with the binding's direct path (read/write never reach JS). */
  direct?: boolean
  /** An introspected disk image: read, write, fsync and truncate go through its router. */
  image?: ImageEntry
  /** Reads of it whose blocks are all in the RAM tier are answered by the binding (no JS round trip). */
  ram?: boolean
  /** Its image's block-state table is registered with the binding (the native data path). */
  data?: boolean
  /** The file behind the emulated disk (--emulate-hdd). */
  dev?: StoreDevice
}

/** Byte I/O on an open store file through the disk it lives on (the emulated disk of --emulate-hdd). */
export interface StoreDevice {
  /** Reads up to len bytes at pos into buf at off; resolves to the bytes read (0: end of file). */
  pread(buf: Buffer, off: number, len: number, pos: number): Promise<number>
  /** Writes up to len bytes of buf from off at pos; resolves to the bytes written. */
  pwrite(buf: Buffer, off: number, len: number, pos: number): Promise<number>
}

/**
 * The device of an open store fd (the fd stays the handle's). One file, one
 * place on the disk: every handle of a file, and the datapath's own fd of an
 * image, get the same region, so the factory keys it by the file, not the fd.
 */
export type DeviceFor = (fd: number) => StoreDevice

export interface TimeSpec {
  sec: number
  nsec: number
}

export interface StatfsResult {
  bsize: number
  frsize: number
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
  favail: number
  fsid: number
  flag: number
  namemax: number
}

const READDIR_STAT_CONCURRENCY = 64
/** Linux's PATH_MAX, the terminating NUL included. */
const PATH_MAX = 4096

export class StoreFs {
  readonly root: string
  private readonly files = new Map<number, OpenFile>()
  private nextFh = 1
  private readonly freeFhs: number[] = []
  /**
   * Set by the daemon once the binding exists: registers (fd) or drops (-1) the
   * binding's direct path for a handle, which then serves read and write with
   * pread/pwrite on the libfuse thread, no JS round trip. Plain pass-through
   * files use it; the datapath will keep introspected images on the JS path.
   */
  direct: ((fh: number, fd: number) => boolean) | null = null
  /** The datapath (null: --no-introspect, pure pass-through). */
  datapath: Datapath | null = null
  /**
   * Set by the daemon when the binding serves RAM-tier hits itself: registers an
   * image handle (its reads of blocks the RAM tier indexes never reach JS) or
   * drops it (null).
   */
  ramServe: ((fh: number, image: ImageEntry | null) => boolean) | null = null
  /**
   * Set by the daemon when the binding serves images' data blocks itself (the
   * native data path): registers a handle with its image's table, or drops it
   * (null).
   */
  dataServe: ((fh: number, image: ImageEntry | null) => boolean) | null = null
  /** Set by the daemon under --emulate-hdd: the device plain files are read and written through (the direct path is off then). */
  hddFor: DeviceFor | null = null
  private readonly daemonIsRoot = process.getuid?.() === 0

  constructor(root: string) {
    this.root = path.resolve(root)
    // The kernel applies the caller's umask to every mode it sends us; the
    // daemon's own must not strip bits a second time.
    process.umask(0)
    // Every syscall names its entry relative to STORE (at()), so STORE's own
    // path never eats into PATH_MAX: a path the store accepts relative to its
    // root (up to 4,095 bytes) works through the mount. Process-wide: nothing
    // else in the daemon uses relative paths (settings resolve them first).
    process.chdir(this.root)
  }

  /** The absolute store path of a mount path (names: the datapath's keys, log lines). */
  resolve(p: string): string {
    const rel = this.at(p)
    return rel === '.' ? this.root : this.root + p
  }

  /**
   * The path the syscalls use: relative to STORE, the daemon's working
   * directory. Refuses anything that could leave the store.
   */
  at(p: string): string {
    if (typeof p !== 'string' || p[0] !== '/' || p.includes('\0')) throw Object.assign(new Error(`bad path ${p}`), { errno: E.EINVAL })
    if (p === '/') return '.'
    for (const part of p.split('/')) {
      if (part === '..' || part === '.') throw Object.assign(new Error(`path ${p} has a dot component`), { errno: E.EACCES })
    }
    return p.slice(1)
  }

  /** Mount path an open handle was opened by (for log lines about it). */
  pathOf(fh: number): string {
    return this.files.get(fh)?.path ?? `(file handle ${fh})`
  }

  openFiles(): number {
    return this.files.size
  }

  file(fh: number): OpenFile {
    const f = this.files.get(fh)
    if (!f) throw Object.assign(new Error(`unknown file handle ${fh}`), { errno: E.EBADF })
    return f
  }

  private addFile(f: OpenFile): number {
    // fh values are uint32 and never 0 (0 means "no handle" in the binding).
    // Released handles are reused first, so numbers stay small: the binding's
    // direct-I/O table covers handles below FH_LIMIT.
    const fh = this.freeFhs.pop() ?? this.nextFh++
    if (fh > 0xfffffffe) throw Object.assign(new Error('file handle table full'), { errno: E.EMFILE })
    this.files.set(fh, f)
    if (this.hddFor && !f.image) f.dev = this.hddFor(f.fd)
    else if (this.direct && !f.image) f.direct = this.direct(fh, f.fd)
    else if (this.ramServe && f.image) f.ram = this.ramServe(fh, f.image)
    if (this.dataServe && f.image?.state.native?.active) f.data = this.dataServe(fh, f.image)
    return fh
  }

  /** The image's table is ready: its open handles are served by the native data path from now on. */
  serveImageData(image: ImageEntry): void {
    if (!this.dataServe || !image.state.native?.active) return
    for (const [fh, f] of this.files) if (f.image === image && !f.data) f.data = this.dataServe(fh, image)
  }

  /** The image's table is about to be retired: its handles stop using it (before this returns). */
  stopImageData(image: ImageEntry | null): void {
    for (const [fh, f] of this.files) {
      if (!f.data || (image && f.image !== image)) continue
      this.dataServe?.(fh, null)
      f.data = false
    }
  }

  private dropFile(fh: number): OpenFile | undefined {
    const f = this.files.get(fh)
    if (!f) return undefined
    // The direct path stops before the fd closes (release comes after the kernel's last I/O on fh).
    if (f.direct) this.direct?.(fh, -1)
    if (f.ram) this.ramServe?.(fh, null)
    if (f.data) this.dataServe?.(fh, null)
    this.files.delete(fh)
    this.freeFhs.push(fh)
    if (f.image) this.datapath?.release(f.image)
    return f
  }

  /** The binding stops answering image reads from RAM (shutdown: the datapath is about to close). */
  stopRamServe(): void {
    for (const [fh, f] of this.files) {
      if (f.ram) this.ramServe?.(fh, null)
      f.ram = false
    }
    this.ramServe = null
  }

  /** Closes every open store fd (shutdown). */
  async closeAll(): Promise<void> {
    const fds = [...this.files.keys()].map((fh) => this.dropFile(fh)!.fd)
    await Promise.all(fds.map(closeFd))
  }

  // --- attributes -----------------------------------------------------------

  getattr(p: string): Promise<fs.BigIntStats> {
    return fsp.lstat(this.at(p), { bigint: true })
  }

  fgetattr(p: string, fh: number): Promise<fs.BigIntStats> {
    if (!fh) return this.getattr(p)
    const f = this.file(fh)
    return fstat(f.fd, { bigint: true })
  }

  async access(p: string, mode: number): Promise<void> {
    await fsp.access(this.at(p), mode)
  }

  async statfs(p: string): Promise<StatfsResult> {
    const r = sys().statvfs(this.at(p))
    if (typeof r === 'number') throw Object.assign(new Error('statvfs failed'), { errno: r })
    const [bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax] = r
    return { bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax }
  }

  async chmod(p: string, mode: number): Promise<void> {
    // The kernel never asks to chmod a symlink (Linux has no lchmod).
    await fsp.chmod(this.at(p), mode)
  }

  async chown(p: string, uid: number, gid: number): Promise<void> {
    // (uid_t)-1 / (gid_t)-1 mean "leave unchanged"; the binding passes them as uint32.
    await fsp.lchown(this.at(p), uid === 0xffffffff ? -1 : uid, gid === 0xffffffff ? -1 : gid)
  }

  async utimens(p: string, atime: TimeSpec, mtime: TimeSpec): Promise<void> {
    const r = sys().utimensat(this.at(p), atime.sec, atime.nsec, mtime.sec, mtime.nsec)
    if (r < 0) throw Object.assign(new Error('utimensat failed'), { errno: r })
  }

  async truncate(p: string, size: number): Promise<void> {
    if (this.datapath && (await this.datapath.truncated(this.resolve(p), size))) return
    const fd = await openNoFollow(this.at(p), fs.constants.O_WRONLY)
    try {
      await ftruncate(fd, size)
    } finally {
      await closeFd(fd)
    }
  }

  ftruncate(p: string, fh: number, size: number): Promise<void> {
    if (!fh) return this.truncate(p, size)
    const f = this.file(fh)
    if (f.image) return f.image.router.truncate(size)
    return ftruncate(f.fd, size)
  }

  // --- directories ------------------------------------------------------------

  async readdir(p: string): Promise<{ names: string[]; stats: fs.Stats[] }> {
    const dir = this.at(p)
    const entries = await fsp.readdir(dir)
    const names = ['.', '..', ...entries]
    const stats: fs.Stats[] = new Array(names.length)
    const parent = p === '/' ? path.dirname(this.root) : path.dirname(dir)
    const targets = [dir, parent, ...entries.map((n) => path.join(dir, n))]
    let next = 0
    const worker = async () => {
      while (next < targets.length) {
        const i = next++
        try {
          stats[i] = await fsp.lstat(targets[i])
        } catch {
          stats[i] = undefined as unknown as fs.Stats // vanished meanwhile: dropped below
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(READDIR_STAT_CONCURRENCY, targets.length) }, worker))
    const keptNames: string[] = []
    const keptStats: fs.Stats[] = []
    for (let i = 0; i < names.length; i++) {
      if (stats[i]) {
        keptNames.push(names[i])
        keptStats.push(stats[i])
      }
    }
    return { names: keptNames, stats: keptStats }
  }

  async mkdir(p: string, mode: number, caller: Caller | null): Promise<void> {
    const target = this.at(p)
    await fsp.mkdir(target, { mode })
    await this.giveToCaller(target, caller)
    this.datapath?.created(path.dirname(this.resolve(p)), path.basename(p))
  }

  async rmdir(p: string): Promise<void> {
    await fsp.rmdir(this.at(p))
  }

  async fsyncdir(p: string, datasync: number): Promise<void> {
    const fd = await openNoFollow(this.at(p), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
    try {
      await (datasync ? fdatasync : fsync)(fd)
    } finally {
      await closeFd(fd)
    }
  }

  // --- names ------------------------------------------------------------------

  async unlink(p: string): Promise<void> {
    await fsp.unlink(this.at(p))
    this.datapath?.unlinked(this.resolve(p))
  }

  async rename(src: string, dest: string): Promise<void> {
    await fsp.rename(this.at(src), this.at(dest))
    this.datapath?.renamed(this.resolve(src), this.resolve(dest), dest.slice(1))
  }

  async link(src: string, dest: string): Promise<void> {
    await fsp.link(this.at(src), this.at(dest))
  }

  async symlink(target: string, p: string, caller: Caller | null): Promise<void> {
    const linkPath = this.at(p)
    await fsp.symlink(target, linkPath)
    await this.giveToCaller(linkPath, caller)
  }

  async readlink(p: string): Promise<string> {
    return fsp.readlink(this.at(p))
  }

  async mknod(p: string, mode: number, dev: number, caller: Caller | null): Promise<void> {
    const target = this.at(p)
    const r = sys().mknod(target, mode, dev)
    if (r < 0) throw Object.assign(new Error('mknod failed'), { errno: r })
    await this.giveToCaller(target, caller)
  }

  // --- extended attributes ------------------------------------------------------

  async setxattr(p: string, name: string, value: Buffer, flags: number): Promise<void> {
    const r = sys().lsetxattr(this.at(p), name, Buffer.from(value), flags)
    if (r < 0) throw Object.assign(new Error('setxattr failed'), { errno: r })
  }

  async getxattr(p: string, name: string): Promise<Buffer> {
    const r = sys().lgetxattr(this.at(p), name)
    if (typeof r === 'number') throw Object.assign(new Error('getxattr failed'), { errno: r })
    return r
  }

  async listxattr(p: string): Promise<string[]> {
    const r = sys().llistxattr(this.at(p))
    if (typeof r === 'number') throw Object.assign(new Error('listxattr failed'), { errno: r })
    return r.toString('utf8').split('\0').filter((s) => s.length > 0)
  }

  async removexattr(p: string, name: string): Promise<void> {
    const r = sys().lremovexattr(this.at(p), name)
    if (r < 0) throw Object.assign(new Error('removexattr failed'), { errno: r })
  }

  // --- files --------------------------------------------------------------------

  /**
   * O_DIRECT is stripped towards the store (libfuse's buffers are not aligned;
   * durability comes from fsync) and answered with direct_io for this handle, so
   * the caller still bypasses the page cache of the mount.
   */
  async open(p: string, flags: number): Promise<{ fh: number; openFlags: number }> {
    const fd = await openNoFollow(this.at(p), (flags & ~O_DIRECT & ~O_CREAT) | O_NOFOLLOW)
    const abs = this.resolve(p)
    let image: ImageEntry | undefined
    try {
      // The datapath names images by absolute path (its SSD store's key): one
      // past PATH_MAX stays a plain pass-through file.
      if (Buffer.byteLength(abs) < PATH_MAX) image = (await this.datapath?.attach(p.slice(1), abs)) ?? undefined
      if (image && flags & fs.constants.O_TRUNC) await image.router.truncate(0)
    } catch (e) {
      if (image) this.datapath?.release(image)
      if ((e as Error).name === 'ImageRefused') {
        await closeFd(fd)
        throw Object.assign(e as Error, { errno: E.EIO })
      }
      log.error(`image ${p.slice(1)}: the datapath could not take it (${(e as Error).stack ?? e}): served as plain pass-through`)
      image = undefined
    }
    const fh = this.addFile({ fd, path: p, flags, nowaitRead: true, nowaitWrite: true, image })
    return { fh, openFlags: flags & O_DIRECT ? OPEN_DIRECT_IO : 0 }
  }

  async create(p: string, mode: number, flags: number, caller: Caller | null): Promise<{ fh: number; openFlags: number }> {
    const target = this.at(p)
    const base = (flags & ~O_DIRECT & ~O_CREAT & ~O_EXCL) | O_NOFOLLOW
    let fd: number
    let created = true
    try {
      // O_EXCL so that only an entry we made is given to the caller.
      fd = await openNoFollow(target, base | O_CREAT | O_EXCL, mode)
    } catch (e) {
      // The kernel saw no such name, but it appeared in the store meanwhile.
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || flags & O_EXCL) throw e
      fd = await openNoFollow(target, base)
      created = false
    }
    if (created) {
      try {
        await this.giveToCaller(target, caller, fd)
      } catch (e) {
        await closeFd(fd)
        throw e
      }
    }
    const fh = this.addFile({ fd, path: p, flags: flags & ~O_CREAT, nowaitRead: true, nowaitWrite: true })
    if (created) this.datapath?.created(path.dirname(this.resolve(p)), path.basename(p))
    return { fh, openFlags: flags & O_DIRECT ? OPEN_DIRECT_IO : 0 }
  }

  /**
   * Reads into `buf` (the kernel's buffer, valid until we answer) until full or
   * EOF. What the page cache holds is read at once on this thread (RWF_NOWAIT);
   * the rest goes to the thread pool, so a disk read never blocks the loop.
   */
  read(fh: number, buf: Buffer, len: number, pos: number): Promise<number> | number {
    const f = this.file(fh)
    if (f.image) return this.datapath!.read(f.image, buf, len, pos)
    if (f.dev) return devTransfer(f.dev, 'read', buf, len, pos)
    return transfer(f, 'read', buf, len, pos)
  }

  /** Writes all of `buf` (a short write only on error after progress); RWF_NOWAIT first, as read. */
  write(fh: number, buf: Buffer, len: number, pos: number): Promise<number> | number {
    const f = this.file(fh)
    if (f.image) return this.datapath!.write(f.image, buf, len, pos)
    if (f.dev) return devTransfer(f.dev, 'write', buf, len, pos)
    return transfer(f, 'write', buf, len, pos)
  }

  async flush(_fh: number): Promise<void> {
    // close(2) of a local file does not sync: neither do we. Durability is fsync's job.
  }

  fsync(fh: number, datasync: number): Promise<void> {
    const f = this.file(fh)
    if (f.image) return f.image.router.fsync()
    const fd = f.fd
    return (datasync ? fdatasync : fsync)(fd)
  }

  async release(fh: number): Promise<void> {
    const f = this.dropFile(fh)
    if (f) await closeFd(f.fd)
  }

  // --- ownership of what callers create ------------------------------------------

  /**
   * The daemon runs as root, so new store entries belong to root until given
   * to the caller. A setgid parent directory keeps its group (the store already
   * did that when we created the entry), as the kernel would for the caller.
   */
  private async giveToCaller(target: string, caller: Caller | null, fd?: number): Promise<void> {
    if (!this.daemonIsRoot || !caller) return
    const parent = await fsp.stat(path.dirname(target))
    const gid = parent.mode & 0o2000 ? -1 : caller.gid
    if (caller.uid === 0 && (gid === -1 || gid === 0)) return
    if (fd !== undefined) {
      await fchown(fd, caller.uid, gid)
    } else {
      await fsp.lchown(target, caller.uid, gid)
    }
  }
}

/**
 * One read or write of `len` bytes at `pos`: first without blocking on this
 * thread (preadv2/pwritev2 with RWF_NOWAIT), then the remainder on the thread
 * pool. Reads stop at EOF; an error after some progress is a short count.
 */
function transfer(f: OpenFile, dir: 'read' | 'write', buf: Buffer, len: number, pos: number): Promise<number> | number {
  let done = 0
  const isRead = dir === 'read'
  if (isRead ? f.nowaitRead : f.nowaitWrite) {
    const r = isRead ? sys().preadNowait(f.fd, buf, 0, len, pos) : sys().pwriteNowait(f.fd, buf, 0, len, pos)
    if (r === len) return r
    if (r > 0) done = r
    else if (r < 0 && r !== E.EAGAIN) {
      // EOPNOTSUPP (ext4 has no non-blocking buffered writes) and the like: not on this file.
      if (isRead) f.nowaitRead = false
      else f.nowaitWrite = false
    }
  }
  type Io = (fd: number, b: Buffer, off: number, n: number, at: number, cb: (err: NodeJS.ErrnoException | null, n: number) => void) => void
  const io = (isRead ? fs.read : fs.write) as unknown as Io
  return new Promise((resolve, reject) => {
    const step = (): void => {
      io(f.fd, buf, done, len - done, pos + done, (err: NodeJS.ErrnoException | null, n: number) => {
        if (err) return done > 0 ? resolve(done) : reject(err)
        done += n
        if ((isRead && n === 0) || done >= len) return resolve(done)
        step()
      })
    }
    step()
  })
}

/** One read (to EOF) or write (all of it) through the emulated disk. */
async function devTransfer(dev: StoreDevice, dir: 'read' | 'write', buf: Buffer, len: number, pos: number): Promise<number> {
  let done = 0
  while (done < len) {
    const n = dir === 'read' ? await dev.pread(buf, done, len - done, pos + done) : await dev.pwrite(buf, done, len - done, pos + done)
    if (n === 0) break
    done += n
  }
  return done
}

function openNoFollow(p: string, flags: number, mode?: number): Promise<number> {
  return fdOpen(p, flags, mode ?? 0o666)
}

/** Closes an fd; a failing close is ignored (nothing is left to do about it). */
function closeFd(fd: number): Promise<void> {
  return fdClose(fd).catch(() => undefined)
}

export { UTIME_NOW, UTIME_OMIT }
