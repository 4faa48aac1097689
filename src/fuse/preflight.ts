// Checks before mounting. Each failure is one line naming the thing at fault
// and the fix; nothing is mounted until all pass.
import fs from 'fs'
import path from 'path'
import { execFileSync } from 'child_process'
import { CliError } from '../errors'
import { log } from '../log'

const FUSE_MAJOR = 10
const FUSE_MINOR = 229

export function checkFuseDevice(dev = '/dev/fuse'): void {
  let st: fs.Stats
  try {
    st = fs.statSync(dev)
  } catch {
    throw new CliError(`${dev} is missing: load the FUSE kernel module (modprobe fuse); in a container, pass the device in (--device /dev/fuse)`)
  }
  const major = Math.floor(st.rdev / 256) & 0xfff
  const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)
  if (!st.isCharacterDevice() || major !== FUSE_MAJOR || minor !== FUSE_MINOR) {
    throw new CliError(`${dev} is not the FUSE device (character device ${FUSE_MAJOR}:${FUSE_MINOR}): recreate it (mknod ${dev} c ${FUSE_MAJOR} ${FUSE_MINOR}) or load the module (modprobe fuse)`)
  }
  try {
    fs.accessSync(dev, fs.constants.R_OK | fs.constants.W_OK)
  } catch {
    throw new CliError(`${dev} is not readable and writable by this user: run vmdi-fuse as root`)
  }
}

/** Loads the (patched) binding, turning loader failures into their fix. */
export function loadFuseBinding(): typeof import('fuse-native') {
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return require('fuse-native')
  } catch (e) {
    const msg = (e as Error).message ?? String(e)
    if (/libfuse\.so\.2/.test(msg)) {
      throw new CliError(`libfuse.so.2 is missing or unusable (${msg.split('\n')[0].slice(0, 160)}): install the FUSE 2 library (apt-get install --reinstall libfuse2), then retry`)
    }
    if (/No native build was found|Cannot find module/.test(msg)) {
      throw new CliError('the FUSE binding is not built: run scripts/setup.sh (it runs npm ci, which patches and builds fuse-native)')
    }
    throw new CliError(`the FUSE binding failed to load (${msg.split('\n')[0]}): run scripts/setup.sh to rebuild it`)
  }
}

export function checkStore(store: string): string {
  let st: fs.Stats
  try {
    st = fs.statSync(store)
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    if (code === 'ENOENT') throw new CliError(`store ${store} does not exist: create it (mkdir -p ${store}) or name the directory that holds the disk images`)
    throw new CliError(`store ${store} cannot be examined (${code}): check the path and its permissions`)
  }
  if (!st.isDirectory()) throw new CliError(`store ${store} is not a directory: name the directory that holds the disk images`)
  try {
    fs.accessSync(store, fs.constants.R_OK | fs.constants.X_OK)
    fs.readdirSync(store)
  } catch (e) {
    throw new CliError(`store ${store} is not readable (${(e as NodeJS.ErrnoException).code}): fix its permissions or run vmdi-fuse as root`)
  }
  return fs.realpathSync(store)
}

export interface MountInfo {
  mountpoint: string
  fstype: string
  source: string
}

/** The mount table of this namespace, octal escapes decoded. */
export function readMounts(): MountInfo[] {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8')
  const out: MountInfo[] = []
  for (const line of text.split('\n')) {
    if (!line) continue
    const [left, right] = line.split(' - ')
    const f = left.split(' ')
    const r = (right ?? '').split(' ')
    out.push({ mountpoint: unescapeMount(f[4]), fstype: r[0] ?? '', source: unescapeMount(r[1] ?? '') })
  }
  return out
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)))
}

/** Lazily detaches a mount (stale FUSE mounts, busy unmounts). */
export function lazyUnmount(mnt: string): void {
  try {
    execFileSync('fusermount', ['-u', '-z', mnt], { stdio: 'pipe' })
  } catch {
    execFileSync('umount', ['-l', mnt], { stdio: 'pipe' })
  }
}

export interface MountpointCheck {
  path: string
  clearedStale: boolean
}

export function checkMountpoint(mnt: string, store: string, opts: { force: boolean; nonempty: boolean }): MountpointCheck {
  let clearedStale = false
  let st: fs.Stats
  try {
    st = fs.statSync(mnt)
    // The kernel may answer stat from its attribute cache for a moment after
    // the daemon died; listing the directory always asks the daemon.
    if (readMounts().some((m) => m.mountpoint === path.resolve(mnt) && m.fstype.startsWith('fuse'))) fs.readdirSync(mnt)
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    if (code === 'ENOTCONN') {
      if (!opts.force) {
        throw new CliError(
          `mount point ${mnt} is a stale FUSE mount left by a daemon that died (Transport endpoint is not connected): ` +
            `clear it with "fusermount -u -z ${mnt}" (or "umount -l ${mnt}"), or rerun with --force`,
        )
      }
      log.warn(`mount point ${mnt}: clearing the stale FUSE mount left by a dead daemon (--force)`)
      lazyUnmount(mnt)
      clearedStale = true
      return { ...checkMountpoint(mnt, store, { ...opts, force: false }), clearedStale }
    }
    if (code === 'ENOENT') throw new CliError(`mount point ${mnt} does not exist: create it (mkdir -p ${mnt})`)
    throw new CliError(`mount point ${mnt} cannot be examined (${code}): check the path and its permissions`)
  }
  if (!st.isDirectory()) throw new CliError(`mount point ${mnt} is not a directory: name an empty directory to mount on`)
  const real = fs.realpathSync(mnt)
  const mounted = readMounts().find((m) => m.mountpoint === real)
  if (mounted) {
    const hint = mounted.fstype === 'fuse.vmdi-fuse' ? `vmdi-fuse umount ${mnt}` : `umount ${mnt}`
    throw new CliError(`mount point ${mnt} is already a mount point (${mounted.fstype} from ${mounted.source}): unmount it first (${hint}) or choose another directory`)
  }
  if (real === store) throw new CliError(`mount point ${mnt} is the store itself: choose a directory outside the store`)
  if (isInside(real, store)) throw new CliError(`mount point ${mnt} is inside the store ${store}: the mount would contain itself; choose a directory outside the store`)
  if (isInside(store, real)) throw new CliError(`store ${store} is inside the mount point ${mnt}: the mount would hide its own store; choose a mount point outside it`)
  if (!opts.nonempty) {
    const entries = fs.readdirSync(real)
    if (entries.length > 0) {
      throw new CliError(`mount point ${mnt} is not empty (${entries.length} entries would be hidden): empty it, choose another directory, or pass -o nonempty`)
    }
  }
  return { path: real, clearedStale }
}

function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child)
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel)
}
