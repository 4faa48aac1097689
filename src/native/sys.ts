// Typed access to native/vmdi_sys.c: syscalls Node's fs module lacks. Each
// returns a negative errno instead of throwing, so FUSE handlers pass it on.
import path from 'path'
import { PROJECT_ROOT } from '../root'

export interface VmdiSys {
  utimensat(path: string, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): number
  mknod(path: string, mode: number, dev: number): number
  lgetxattr(path: string, name: string): Buffer | number
  lsetxattr(path: string, name: string, value: Buffer, flags: number): number
  llistxattr(path: string): Buffer | number
  lremovexattr(path: string, name: string): number
  statvfs(path: string): number[] | number
  /** preadv2(RWF_NOWAIT): bytes, or -EAGAIN when the data is not in the page cache. */
  preadNowait(fd: number, buf: Buffer, offset: number, length: number, position: number): number
  /** pwritev2(RWF_NOWAIT): bytes, or -EAGAIN / -EOPNOTSUPP when it would block. */
  pwriteNowait(fd: number, buf: Buffer, offset: number, length: number, position: number): number
  /** [start, end) pairs of [start, end) that hold data (SEEK_DATA/SEEK_HOLE), flattened; at most `max` pairs. */
  dataRanges(fd: number, start: number, end: number, max: number): number[] | number
  /** fallocate(PUNCH_HOLE | KEEP_SIZE): 0, or a negative errno. */
  punchHole(fd: number, offset: number, length: number): number
  /** One datagram to systemd's NOTIFY_SOCKET (a path, or '@name' for an abstract socket): 0, or a negative errno. */
  sdNotify(socket: string, message: string): number
}

/** Kernel special values for utimensat's tv_nsec. */
export const UTIME_NOW = (1 << 30) - 1
export const UTIME_OMIT = (1 << 30) - 2

let loaded: VmdiSys | null = null

export function sys(): VmdiSys {
  if (!loaded) {
    loaded = require(path.join(PROJECT_ROOT, 'native', 'build', 'Release', 'vmdi_sys.node')) as VmdiSys
  }
  return loaded
}
