// The one errno boundary of the mount: every handler's failure becomes a
// negative errno here. Node's fs errors already carry a negative `errno`.
import os from 'os'

export const E = {
  EPERM: -os.constants.errno.EPERM,
  ENOENT: -os.constants.errno.ENOENT,
  EIO: -os.constants.errno.EIO,
  EBADF: -os.constants.errno.EBADF,
  EACCES: -os.constants.errno.EACCES,
  EINVAL: -os.constants.errno.EINVAL,
  ENOSPC: -os.constants.errno.ENOSPC,
  ERANGE: -os.constants.errno.ERANGE,
  ENODATA: -os.constants.errno.ENODATA,
  ENOTCONN: -os.constants.errno.ENOTCONN,
  ENOSYS: -os.constants.errno.ENOSYS,
  EMFILE: -os.constants.errno.EMFILE,
  EAGAIN: -os.constants.errno.EAGAIN,
} as const

/** A negative errno for anything thrown by a handler or by Node's fs. */
export function toErrno(err: unknown): number {
  if (typeof err === 'number') return err < 0 ? err : -err
  if (err && typeof err === 'object') {
    const e = err as { errno?: unknown; code?: unknown }
    if (typeof e.errno === 'number' && e.errno !== 0) return e.errno < 0 ? e.errno : -e.errno
    if (typeof e.code === 'string') {
      const n = (os.constants.errno as Record<string, number>)[e.code]
      if (typeof n === 'number') return -n
    }
  }
  return E.EIO
}
