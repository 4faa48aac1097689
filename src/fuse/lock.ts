// One daemon per datastore and per SSD store (issue 16, item 4): a lock the
// kernel releases when the process dies, whatever way it dies.
//
// flock(2) on a lock file: Node has no flock, so `flock -xn 3` (util-linux)
// takes it on our own open file description, passed as its fd 3. flock locks
// belong to the open file description, not to the process: the lock stays
// ours after flock(1) exits, for as long as this process keeps the fd open
// (libuv opens with O_CLOEXEC: no child of ours inherits it). The file holds
// the owner's pid and mount point, for the refusal's message.
import { spawnSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { CliError } from '../errors'
import { RUNTIME_DIR } from './runtime'

/** Lock fds held for the life of the process (never closed: the kernel drops them at exit). */
const held: number[] = []

/** Where the lock of a datastore lives: keyed by its real path. */
export function storeLockPath(store: string): string {
  return path.join(RUNTIME_DIR, `store-${crypto.createHash('sha256').update(fs.realpathSync(store)).digest('hex').slice(0, 16)}.lock`)
}

/** The lock beside an SSD store file. */
export function ssdLockPath(ssd: string): string {
  return `${ssd}.lock`
}

/** Takes `file`'s lock for this process or throws a CliError naming the daemon that holds it. `what`: "the store /hdd/store". */
export function takeLock(file: string, what: string, mountpoint: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true })
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o644)
  const r = spawnSync('flock', ['-x', '-n', '3'], { stdio: ['ignore', 'ignore', 'pipe', fd] })
  if (r.error) {
    fs.closeSync(fd)
    throw new CliError(`cannot lock ${file} (${r.error.message}): flock(1) of util-linux is needed`)
  }
  if (r.status !== 0) {
    let owner = 'another vmdi-fuse'
    try {
      const o = JSON.parse(fs.readFileSync(fd, 'utf8')) as { pid: number; mountpoint: string }
      owner = `vmdi-fuse pid ${o.pid} mounted on ${o.mountpoint}`
    } catch {
      /* the owner is still writing it */
    }
    fs.closeSync(fd)
    throw new CliError(`${what} is already served by ${owner}: one daemon per store; unmount it first, or mount another store`)
  }
  fs.ftruncateSync(fd, 0)
  fs.writeSync(fd, JSON.stringify({ pid: process.pid, mountpoint }) + '\n', 0)
  held.push(fd)
}
