// Mount options: what we always set, what `-o` may add, and what it may not.
// libfuse 2 leaves a dead mount behind when it meets an option it does not
// know, so every user option is checked here, before anything is mounted.
import { CliError } from '../errors'

/** Options that are always on, and why. */
export const FIXED_OPTIONS: ReadonlyArray<[string, string]> = [
  ['allow_other', 'every user the kernel lets in can use the mount (and knfsd)'],
  ['default_permissions', 'the kernel checks permissions exactly as the store does'],
  ['big_writes', 'writes arrive in requests of up to max_write, not 4 KiB'],
  ['max_write=131072', 'the largest request libfuse 2 accepts'],
  ['max_read=131072', 'reads in requests of up to 128 KiB'],
  ['use_ino', 'inode numbers are the store\'s'],
]

/** Flags `-o` may add. */
const FLAG_OPTIONS = new Set([
  'ro', 'rw', 'nonempty', 'noforget', 'kernel_cache', 'auto_cache', 'noauto_cache', 'hard_remove',
  'direct_io', 'async_read', 'sync_read', 'atomic_o_trunc', 'splice_read', 'splice_write', 'splice_move',
  'no_splice_read', 'no_splice_write', 'no_splice_move', 'nosuid', 'suid', 'nodev', 'dev', 'noexec', 'exec',
  'noatime', 'atime', 'relatime', 'sync', 'async', 'dirsync',
])

/** Valued options `-o` may add, with their value check. */
const VALUE_OPTIONS: Record<string, (v: string) => boolean> = {
  attr_timeout: isNonNegativeNumber,
  entry_timeout: isNonNegativeNumber,
  negative_timeout: isNonNegativeNumber,
  ac_attr_timeout: isNonNegativeNumber,
  max_read: isPositiveInteger,
  max_write: isPositiveInteger,
  max_readahead: isPositiveInteger,
  remember: isNonNegativeInteger,
  fsname: (v) => v.length > 0 && v.length < 256,
}

/** Options `-o` must not carry, with the reason given to the user. */
const REFUSED: Record<string, string> = {
  allow_root: 'the mount is always allow_other',
  umask: 'it would show permissions other than the store\'s',
  uid: 'it would show owners other than the store\'s',
  gid: 'it would show groups other than the store\'s',
  subtype: 'the type is always fuse.vmdi-fuse (vmdi-fuse umount and status find mounts by it)',
  debug: 'use --debug',
}

/** Options that are always on: accepted in -o and ignored. */
const ALWAYS = new Set(['allow_other', 'default_permissions', 'big_writes', 'use_ino'])

export interface ParsedOptions {
  /** Options for libfuse, in order, already validated. */
  extra: string[]
  /** Whether `nonempty` was given (the preflight check honours it). */
  nonempty: boolean
}

export function parseUserOptions(groups: string[]): ParsedOptions {
  const extra: string[] = []
  let nonempty = false
  const seen = new Map<string, string>()
  for (const group of groups) {
    for (const raw of group.split(',')) {
      const opt = raw.trim()
      if (!opt) continue
      const eq = opt.indexOf('=')
      const name = eq < 0 ? opt : opt.slice(0, eq)
      const value = eq < 0 ? undefined : opt.slice(eq + 1)
      if (REFUSED[name]) throw new CliError(`-o ${name} is not accepted: ${REFUSED[name]}`, 2)
      if (ALWAYS.has(name) && value === undefined) continue
      if (FLAG_OPTIONS.has(name)) {
        if (value !== undefined) throw new CliError(`-o ${opt}: ${name} takes no value (write -o ${name})`, 2)
        if (name === 'nonempty') nonempty = true
        seen.set(name, opt)
        continue
      }
      const check = VALUE_OPTIONS[name]
      if (check) {
        if (value === undefined || !check(value)) throw new CliError(`-o ${opt}: ${name} needs a valid value (e.g. -o ${example(name)})`, 2)
        seen.set(name, `${name}=${name === 'fsname' ? escapeOptionValue(value) : value}`)
        continue
      }
      throw new CliError(
        `unknown mount option "-o ${opt}": nothing was mounted; accepted options are ${[...FLAG_OPTIONS].sort().join(', ')}, ` +
          `${Object.keys(VALUE_OPTIONS).map((k) => k + '=…').join(', ')} (see vmdi-fuse --help)`,
        2,
      )
    }
  }
  for (const v of seen.values()) extra.push(v)
  return { extra, nonempty }
}

/** libfuse's option parser splits at commas; a backslash escapes one. */
export function escapeOptionValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/,/g, '\\,')
}

export function describeAcceptedOptions(): string {
  return [...FLAG_OPTIONS].sort().join(', ') + ', ' + Object.keys(VALUE_OPTIONS).map((k) => k + '=VALUE').join(', ')
}

function example(name: string): string {
  return name === 'fsname' ? 'fsname=datastore1' : name.endsWith('timeout') ? `${name}=1.0` : `${name}=131072`
}

function isNonNegativeNumber(v: string): boolean {
  return /^\d+(\.\d+)?$/.test(v)
}
function isPositiveInteger(v: string): boolean {
  return /^[1-9]\d*$/.test(v)
}
function isNonNegativeInteger(v: string): boolean {
  return /^\d+$/.test(v)
}
