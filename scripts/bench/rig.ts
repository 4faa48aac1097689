// The benchmark rig: vmdi-fuse mounts (the CLI in the foreground, as a child in
// its own process group so a terminal ^C reaches the harness first), loop
// devices and guest mounts, each registered with a Cleanup that tears down in
// reverse order on success, on error and on SIGINT.

import { ChildProcess, spawn } from 'child_process'
import fs from 'fs'
import path from 'path'
import { PROJECT_ROOT } from '../../src/root'
import { askControl, type HddAnswer, type ImageStats, type StatsAnswer } from '../../src/control/protocol'
import { readRecord } from '../../src/fuse/runtime'
import { progress, run, sleep } from './util'

export const CLI = path.join(PROJECT_ROOT, 'dist', 'src', 'cli.js')

interface Resource {
  what: string
  fn: () => Promise<void>
}

/** Resources to release, last acquired first. */
export class Cleanup {
  private stack: Resource[] = []

  /** Registers `fn`; the returned function releases it now (once). */
  add(what: string, fn: () => Promise<void>): () => Promise<void> {
    const r: Resource = { what, fn }
    this.stack.push(r)
    return async () => {
      const i = this.stack.indexOf(r)
      if (i < 0) return
      this.stack.splice(i, 1)
      await r.fn()
    }
  }

  private unwinding: Promise<void> | null = null

  /** Releases everything, last first; failures are reported, never thrown. One unwind at a time. */
  unwind(): Promise<void> {
    if (!this.unwinding) this.unwinding = this.drain().finally(() => (this.unwinding = null))
    return this.unwinding
  }

  private async drain(): Promise<void> {
    while (this.stack.length) {
      const r = this.stack.pop()!
      try {
        await r.fn()
      } catch (e) {
        progress(`cleanup: ${r.what}: ${(e as Error).message}`)
      }
    }
  }

  get size(): number {
    return this.stack.length
  }
}

export function isMounted(dir: string): boolean {
  const real = path.resolve(dir)
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === real)
}

/** The emulated disk's counters (stats --json "hdd"). */
export type HddCounters = HddAnswer
export type { ImageStats }
/** `vmdi-fuse stats --json`, as src/control/protocol.ts types it. */
export type MountStats = StatsAnswer

export class FuseMount {
  private exited = false
  readonly exit: Promise<number | null>
  private release: () => Promise<void> = async () => undefined

  constructor(
    readonly mnt: string,
    readonly proc: ChildProcess,
    readonly logFile: string,
  ) {
    this.exit = new Promise((res) => proc.on('exit', (code) => res(code)))
    void this.exit.then(() => (this.exited = true))
  }

  setRelease(fn: () => Promise<void>): void {
    this.release = fn
  }

  get alive(): boolean {
    return !this.exited
  }

  async stats(): Promise<MountStats> {
    const rec = readRecord(fs.realpathSync(this.mnt))
    if (!rec) throw new Error(`no vmdi-fuse record for ${this.mnt}`)
    return askControl(rec.socket, { cmd: 'stats' }, 60_000)
  }

  /** Unmounts (the daemon destages first) and waits for the daemon; releases the cleanup entry. */
  async umount(): Promise<void> {
    await this.release()
  }

  /** What the cleanup runs: `vmdi-fuse umount`, then harder means if it fails. */
  async teardown(): Promise<void> {
    if (!this.exited) {
      const r = await run(process.execPath, [CLI, 'umount', this.mnt], { allowFail: true, timeoutMs: 30 * 60_000 })
      if (r.code !== 0) {
        progress(`vmdi-fuse umount ${this.mnt} failed (${r.stderr.trim()}): SIGTERM to pid ${this.proc.pid}`)
        this.proc.kill('SIGTERM')
        await Promise.race([this.exit, sleep(60_000)])
      }
    }
    if (!this.exited) {
      this.proc.kill('SIGKILL')
      await Promise.race([this.exit, sleep(5_000)])
    }
    if (isMounted(this.mnt)) await run('fusermount', ['-u', '-z', this.mnt], { allowFail: true })
  }
}

/** `vmdi-fuse -f ARGS STORE MNT`, resolved once it prints "mounted ". */
export async function mountFuse(cleanup: Cleanup, store: string, mnt: string, args: string[], env: NodeJS.ProcessEnv, logFile: string): Promise<FuseMount> {
  fs.mkdirSync(mnt, { recursive: true })
  const log = fs.openSync(logFile, 'a')
  fs.writeSync(log, `\n=== vmdi-fuse -f ${args.join(' ')} ${store} ${mnt}\n`)
  let out = ''
  const proc = spawn(process.execPath, [CLI, '-f', ...args, store, mnt], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  })
  const m = new FuseMount(mnt, proc, logFile)
  const onData = (d: Buffer) => {
    if (out.length < 1 << 16) out += d.toString()
    fs.writeSync(log, d)
  }
  proc.stdout!.on('data', onData)
  proc.stderr!.on('data', onData)
  void m.exit.then(() => fs.closeSync(log))
  m.setRelease(cleanup.add(`vmdi-fuse on ${mnt}`, () => m.teardown()))
  const end = Date.now() + 60_000
  while (!(out.includes('mounted ') && isMounted(mnt))) {
    if (!m.alive) {
      await m.umount()
      throw new Error(`vmdi-fuse ${args.join(' ')} exited before mounting:\n${out.trim().split('\n').slice(-8).join('\n')}`)
    }
    if (Date.now() > end) {
      await m.umount()
      throw new Error(`vmdi-fuse ${args.join(' ')} did not mount within 60 s:\n${out.trim().split('\n').slice(-8).join('\n')}`)
    }
    await sleep(20)
  }
  return m
}

/** A loop device over `file` (offset/size of one partition), direct I/O as the issue asks. */
export async function attachLoop(cleanup: Cleanup, file: string, offset: number, size: number, readOnly: boolean): Promise<{ dev: string; detach: () => Promise<void> }> {
  const args = ['--direct-io=on', '-f', '--show', '-o', String(offset), '--sizelimit', String(size)]
  if (readOnly) args.push('-r')
  const dev = (await run('losetup', [...args, file])).stdout.trim()
  if (!dev.startsWith('/dev/loop')) throw new Error(`losetup gave "${dev}"`)
  const dio = fs.readFileSync(`/sys/block/${path.basename(dev)}/loop/dio`, 'utf8').trim()
  if (dio !== '1') progress(`warning: ${dev} is not in direct-I/O mode (loop/dio = ${dio})`)
  const detach = cleanup.add(`loop device ${dev}`, async () => {
    for (let i = 0; i < 20; i++) {
      const r = await run('losetup', ['-d', dev], { allowFail: true })
      if (r.code === 0) return
      await sleep(250)
    }
    throw new Error(`losetup -d ${dev} keeps failing`)
  })
  return { dev, detach }
}

export async function mountGuest(cleanup: Cleanup, dev: string, fstype: string, dir: string, readOnly: boolean): Promise<() => Promise<void>> {
  fs.mkdirSync(dir, { recursive: true })
  const opts = readOnly ? 'ro' : 'rw'
  // noinit_itable: no ext4lazyinit thread (the images have their inode tables zeroed anyway).
  await run('mount', ['-t', fstype, '-o', fstype === 'ext4' ? `${opts},noinit_itable` : opts, dev, dir])
  return cleanup.add(`guest mount ${dir}`, async () => {
    for (let i = 0; i < 20; i++) {
      const r = await run('umount', [dir], { allowFail: true, timeoutMs: 30 * 60_000 })
      if (r.code === 0 || !isMounted(dir)) return
      await sleep(250)
    }
    await run('umount', ['-l', dir], { allowFail: true })
  })
}

/** Guest page cache, dentries and inodes dropped (and the host's: the store files too). */
export async function dropCaches(): Promise<void> {
  await run('sync', [])
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3')
}
