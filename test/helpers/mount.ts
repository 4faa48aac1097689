// Real mounts for tests: `vmdi-fuse -f STORE MNT` as a child process.
import { ChildProcess, execFileSync, spawn, spawnSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { CLI, runCli } from './cli'

export interface Mounted {
  store: string
  mnt: string
  proc: ChildProcess
  log: () => string
  exited: Promise<number | null>
  /** `vmdi-fuse umount` and the daemon's exit status. */
  stop(): Promise<number | null>
}

export function tmpdir(prefix = 'vmdi-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix))
}

/** A mount test's places under base/name: the store and the guest's mount point (both made), a tree to fill, the mount point. */
export function testDirs(base: string, name: string): { store: string; guest: string; tree: string; mnt: string } {
  const dir = path.join(base, name)
  const out = { store: path.join(dir, 'store'), guest: path.join(dir, 'guest'), tree: path.join(dir, 'tree'), mnt: path.join(dir, 'mnt') }
  fs.mkdirSync(out.store, { recursive: true })
  fs.mkdirSync(out.guest, { recursive: true })
  return out
}

export function isMounted(mnt: string): boolean {
  const real = path.resolve(mnt)
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === real)
}

export async function waitFor(cond: () => boolean, ms = 20_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

/** What a daemon that will not exit is doing: each thread's name, state, wait channel and kernel stack. */
export function threadReport(pid: number): string {
  const lines: string[] = []
  let tasks: string[] = []
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`)
  } catch {
    return `pid ${pid} is gone`
  }
  for (const t of tasks) {
    const read = (f: string) => {
      try {
        return fs.readFileSync(`/proc/${pid}/task/${t}/${f}`, 'utf8').trim()
      } catch (e) {
        return `(${(e as Error).message})`
      }
    }
    const state = /State:\s*(.*)/.exec(read('status'))?.[1] ?? '?'
    lines.push(`thread ${t} ${read('comm')} ${state} wchan=${read('wchan')}\n  ${read('stack').split('\n').join('\n  ')}`)
  }
  return lines.join('\n')
}

/** The daemon's exit status, or an error carrying its log and its threads' stacks after `ms`. */
export async function exitWithin(m: Mounted, ms: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<'late'>((res) => (timer = setTimeout(() => res('late'), ms)))
  const r = await Promise.race([m.exited, late])
  clearTimeout(timer)
  if (r !== 'late') return r
  const report = threadReport(m.proc.pid!)
  // Clear the way for the tests that follow: the daemon and its mount go.
  m.proc.kill('SIGKILL')
  spawnSync('fusermount', ['-u', '-z', m.mnt])
  throw new Error(`the daemon (pid ${m.proc.pid}) has not exited ${ms / 1000} s after it was asked to\n--- its log ---\n${m.log()}\n--- its threads ---\n${report}`)
}

export async function mount(store: string, mnt: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<Mounted> {
  fs.mkdirSync(mnt, { recursive: true })
  let out = ''
  // The SSD store's default home: beside the test's store, not /var/lib.
  const state = { VMDI_STATE_DIR: path.join(path.dirname(path.resolve(store)), 'state') }
  const proc = spawn(process.execPath, [CLI, '-f', ...args, store, mnt], { env: { ...process.env, ...state, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  proc.stdout!.on('data', (d) => (out += d))
  proc.stderr!.on('data', (d) => (out += d))
  const exited = new Promise<number | null>((res) => proc.on('exit', (code) => res(code)))
  let dead = false
  void exited.then(() => (dead = true))
  await waitFor(() => dead || (isMounted(mnt) && out.includes('mounted ')), 30_000, `mount of ${store} on ${mnt}`)
  if (dead) throw new Error(`vmdi-fuse exited before mounting:\n${out}`)
  return {
    store,
    mnt,
    proc,
    log: () => out,
    exited,
    async stop() {
      if (!dead) {
        const r = runCli(['umount', mnt])
        if (r.status !== 0) throw new Error(`umount failed: ${r.stderr}`)
      }
      return exited
    },
  }
}

/**
 * The HDD file alone, after the mount is gone: `e2fsck -fn` must find it clean (throws with its
 * output otherwise), then `check` runs with the image's file system mounted read-only at `dir`.
 */
export function checkImageAlone(img: string, dir: string, check: () => void): void {
  const fsck = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' })
  if (fsck.status !== 0) throw new Error(`e2fsck -fn ${img} exited ${fsck.status}:\n${fsck.stdout}${fsck.stderr}`)
  const loop = execFileSync('losetup', ['-r', '-f', '--show', img], { encoding: 'utf8' }).trim()
  try {
    execFileSync('mount', ['-o', 'ro', loop, dir])
    try {
      check()
    } finally {
      execFileSync('umount', [dir])
    }
  } finally {
    execFileSync('losetup', ['-d', loop])
  }
}
