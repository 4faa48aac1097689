// mount(8)'s helper for fstab entries of type fuse.vmdi-fuse:
//
//   /hdd/store  /export  fuse.vmdi-fuse  ssd=/ssd/vmdi.sqlite,ram-cache=2G,nfs,_netdev  0 0
//
// mount(8) runs /sbin/mount.fuse.vmdi-fuse STORE MOUNTPOINT [-sfnv] [-o OPTS]
// (scripts/mount.fuse.vmdi-fuse, linked by scripts/setup.sh). Each -o key is
// the CLI's long option without its dashes (nfs, ssd=PATH, ram-cache=SIZE,
// exclude=GLOB, …); libfuse options the CLI's -o takes pass through to it;
// mount(8)'s own conventions (defaults, rw, auto, noauto, user, users, nofail,
// _netdev, x-*, comment=) are ignored. An unknown key is refused in one line
// and nothing is mounted. The mount detaches like `vmdi-fuse STORE MOUNTPOINT`.
import { spawnSync } from 'child_process'
import path from 'path'
import { CliError } from './errors'
import { parseUserOptions } from './fuse/options'

/** fstab keys that name the CLI's options with a value. */
const VALUED = new Set(['ssd', 'ssd-max', 'ram-cache', 'small-files', 'new-data', 'ram-floor', 'exclude', 'emulate-hdd', 'cache-mode', 'metrics', 'log'])
/** fstab keys that are the CLI's flags. */
const FLAGS = new Set(['nfs', 'no-introspect', 'no-boot-files', 'debug', 'force'])
/** mount(8)'s and systemd's options, meaningless to the file system. */
const IGNORED = new Set(['defaults', 'rw', 'auto', 'noauto', 'user', 'users', 'nouser', 'owner', 'group', 'nofail', '_netdev'])
/** Whether the CLI's -o takes `o` (a libfuse option, src/fuse/options.ts). */
function isFuseOption(o: string): boolean {
  try {
    parseUserOptions([o])
    return true
  } catch {
    return false
  }
}

/** The CLI arguments an fstab option string stands for; throws a CliError naming an unknown key. */
export function fstabToArgs(opts: string): string[] {
  const args: string[] = []
  const fuse: string[] = []
  for (const raw of opts.split(',')) {
    const o = raw.trim()
    if (!o) continue
    const eq = o.indexOf('=')
    const key = eq < 0 ? o : o.slice(0, eq)
    const value = eq < 0 ? null : o.slice(eq + 1)
    if (IGNORED.has(key) || key.startsWith('x-') || key === 'comment') continue
    if (FLAGS.has(key)) {
      if (value !== null) throw new CliError(`fstab option ${o}: ${key} takes no value`, 2)
      args.push(`--${key}`)
    } else if (VALUED.has(key)) {
      if (!value) throw new CliError(`fstab option ${o}: ${key} needs a value (${key}=…)`, 2)
      args.push(`--${key}`, value)
    } else if (isFuseOption(o)) {
      fuse.push(o)
    } else {
      throw new CliError(
        `fstab option ${o} is not a vmdi-fuse option: use ${[...FLAGS, ...[...VALUED].map((k) => `${k}=…`)].join(', ')}, libfuse options the -o flag takes, or mount(8)'s (${[...IGNORED].join(', ')}); nothing is mounted`,
        2,
      )
    }
  }
  if (fuse.length) args.push('-o', fuse.join(','))
  return args
}

/** mount.fuse.vmdi-fuse STORE MOUNTPOINT [-sfnv] [-o OPTS] [-t TYPE] (mount(8)'s helper calling convention). */
export function parseHelperArgv(argv: string[]): { store: string; mountpoint: string; opts: string; fake: boolean } {
  const pos: string[] = []
  const opts: string[] = []
  let fake = false
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '-o') opts.push(argv[++i] ?? '')
    else if (a.startsWith('-o')) opts.push(a.slice(2))
    else if (a === '-t' || a === '-N') i++ // type and namespace: ours is fuse.vmdi-fuse
    else if (/^-[sfnvwrV]+$/.test(a)) fake ||= a.includes('f')
    else if (a.startsWith('-')) throw new CliError(`mount.fuse.vmdi-fuse: unknown flag ${a} (usage: mount.fuse.vmdi-fuse STORE MOUNTPOINT [-o OPTIONS])`, 2)
    else pos.push(a)
  }
  if (pos.length !== 2) throw new CliError('mount.fuse.vmdi-fuse: usage: mount.fuse.vmdi-fuse STORE MOUNTPOINT [-o OPTIONS] (mount(8) runs it for fstab entries of type fuse.vmdi-fuse)', 2)
  return { store: pos[0], mountpoint: pos[1], opts: opts.join(','), fake }
}

function main(): void {
  try {
    const h = parseHelperArgv(process.argv.slice(2))
    const args = fstabToArgs(h.opts)
    if (h.fake) return
    const cli = path.join(__dirname, 'cli.js')
    const r = spawnSync(process.execPath, [cli, ...args, h.store, h.mountpoint], { stdio: 'inherit' })
    process.exitCode = r.status ?? 1
  } catch (e) {
    process.stderr.write(`vmdi-fuse: ${(e as Error).message}\n`)
    process.exitCode = e instanceof CliError ? e.exitCode : 1
  }
}

if (require.main === module) main()
