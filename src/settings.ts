// The mount's settings: every option of `vmdi-fuse [options] STORE MOUNTPOINT`
// checked and turned into one typed Settings object, defaults sized to this
// machine. Everything that can refuse a mount before it exists happens here,
// in the order the errors have always come: -o options, STORE, MOUNTPOINT,
// /dev/fuse and libfuse, the option string, --emulate-hdd, --cache-mode and
// the datapath's sizes and SSD store (a non-redirecting mount is refused while
// the store holds unwritten blocks). Usage errors exit with status 2.
import fs from 'fs'
import os from 'os'
import path from 'path'
import { CliError } from './errors'
import { escapeOptionValue, FIXED_OPTIONS, parseUserOptions } from './fuse/options'
import type { DeviceFor } from './fuse/passthrough'
import { checkFuseDevice, checkMountpoint, checkStore, loadFuseBinding } from './fuse/preflight'
import { parseMetricsAddress } from './fuse/metrics'
import { runtimeId } from './fuse/runtime'
import { sys } from './native/sys'
import { CACHE_MODES, type CacheMode } from './placement/options'
import { formatSize, parseSize } from './size'
import { hddDevice } from './store/hdd-device'
import { HddModel, LAPTOP_5400, type HddProfile } from './store/hdd-model'
import { SsdStore } from './store/ssd'

/** The command line as commander hands it over (strings unparsed). */
export interface MountConfig {
  store: string
  mountpoint: string
  foreground: boolean
  options: string[]
  nfs: boolean
  force: boolean
  debug: boolean
  log: string | null
  /** false: --no-introspect (pure pass-through). */
  introspect?: boolean
  ramCache?: string
  ssd?: string
  ssdMax?: string
  exclude?: string[]
  /** Benchmark rig: the emulated disk profile (--emulate-hdd), and configurations (b) and (f) (--cache-mode conventional, block-cache). */
  emulateHdd?: string
  cacheMode?: string
  /** --small-files SIZE: regular files up to SIZE have their data placed with the meta-data. */
  smallFiles?: string
  /** --new-data SIZE: writes to newly allocated blocks held on the SSD store up to SIZE. */
  newData?: string
  /** --ram-floor SIZE|fair: meta-data RAM each image keeps against the other images' blocks. */
  ramFloor?: string
  /** --no-boot-files: false; the guests' boot files are placed with the meta-data otherwise. */
  bootFiles?: boolean
  /** --metrics HOST:PORT: Prometheus metrics served there. */
  metrics?: string
  /** --introspect-memory SIZE: RAM all images' maps and running scans may take together. */
  introspectMemory?: string
}

/** What the datapath is built with (src/placement/datapath.ts, DatapathOptions). */
export interface DatapathSettings {
  /** RAM for cached blocks, bytes (--ram-cache). */
  ramBytes: number
  /** The SSD store's SQLite file, absolute (--ssd). */
  ssdPath: string
  /** Cap of the SSD store, bytes (--ssd-max). */
  ssdMaxBytes: number
  /** Globs, relative to the store, of files never introspected (--exclude). */
  exclude: string[]
  cacheMode: CacheMode
  /** Regular files up to this many bytes have their data placed with the meta-data (--small-files; 0: off). */
  smallFileBytes: number
  /** New data held on the SSD store up to this many bytes (--new-data, at most half the cap; 0: off). */
  newDataBytes: number
  /** Meta-data RAM each image keeps against the others (--ram-floor): bytes, or 'fair' (the RAM cache over the images attached); 0: off. */
  ramFloor: number | 'fair'
  /** The guests' boot files' data placed with the meta-data (--no-boot-files: false). */
  bootFiles: boolean
  /** The background destage tick, ms (VMDI_DESTAGE_INTERVAL_MS; undefined: the datapath's default). */
  destageIntervalMs: number | undefined
  /** RAM all images' maps and running scans may take together (--introspect-memory; default 1/8 of RAM, at most 4 GiB). */
  introspectMemoryBytes: number
}

export interface Settings {
  /** Real path of STORE. */
  store: string
  /** Real path of MOUNTPOINT. */
  mountpoint: string
  /** libfuse options, validated, ours and the user's merged (-o, --nfs). */
  fuseOptions: string[]
  debug: boolean
  /** Log file when detached (null: stderr). */
  log: string | null
  /** null: --no-introspect, every file a plain pass-through. */
  datapath: DatapathSettings | null
  /** The emulated disk under every HDD file (--emulate-hdd), or null. */
  hdd: HddProfile | null
  /** Where GET /metrics is served (--metrics), or null. */
  metrics: { host: string; port: number } | null
  /** Options not given, left at their defaults (the mount's log says so). */
  defaulted: { ramCache: boolean; ssd: boolean; ssdMax: boolean; smallFiles: boolean; newData: boolean }
}

/** --small-files default: regular files up to 32 KiB have their data placed with the meta-data. */
const DEFAULT_SMALL_FILE_BYTES = 32 << 10
const MAX_SMALL_FILE_BYTES = 1 << 20
/** --new-data default (and at most half the SSD store's cap). */
const DEFAULT_NEW_DATA_BYTES = 1 << 30
/** fuse-native copies the option string into a 1024-byte buffer. */
const MAX_OPTIONS_CHARS = 900

/** Emulated disk profiles for --emulate-hdd. */
export const HDD_PROFILES: Record<string, HddProfile> = { laptop5400: LAPTOP_5400 }

/** Every check that can fail before a mount exists; the settings of the mount. */
export function readSettings(cfg: MountConfig): Settings {
  const user = parseUserOptions(cfg.options)
  const store = checkStore(cfg.store)
  const mountpoint = checkMountpoint(cfg.mountpoint, store, { force: cfg.force, nonempty: user.nonempty }).path
  checkFuseDevice()
  loadFuseBinding()
  return {
    store,
    mountpoint,
    fuseOptions: fuseOptions(cfg, store, user.extra),
    debug: cfg.debug,
    log: cfg.log,
    hdd: hddProfile(cfg.emulateHdd),
    datapath: datapathSettings(cfg, store, mountpoint),
    metrics: cfg.metrics === undefined ? null : parseMetricsAddress(cfg.metrics),
    defaulted: {
      ramCache: !cfg.ramCache,
      ssd: !cfg.ssd,
      ssdMax: !cfg.ssdMax,
      smallFiles: !cfg.smallFiles,
      newData: !cfg.newData,
    },
  }
}

/** Ours (FIXED_OPTIONS, noforget for --nfs, fsname, subtype) merged with the user's -o; the user's value wins. */
function fuseOptions(cfg: MountConfig, store: string, userExtra: string[]): string[] {
  const ours = FIXED_OPTIONS.filter(([o]) => o !== 'allow_other' && o !== 'default_permissions').map(([o]) => o)
  if (cfg.nfs && !userExtra.some((o) => o === 'noforget' || o.startsWith('remember='))) ours.push('noforget')
  const userNames = new Set(userExtra.map((o) => o.split('=')[0]))
  const merged = ours.filter((o) => !userNames.has(o.split('=')[0])).concat(userExtra)
  if (!userNames.has('fsname')) merged.push(`fsname=${escapeOptionValue(store)}`)
  merged.push('subtype=vmdi-fuse')
  if (merged.join(',').length > MAX_OPTIONS_CHARS) throw new CliError('mount options are too long (over 900 characters): shorten -o fsname= or the store path')
  return merged
}

function hddProfile(name: string | undefined): HddProfile | null {
  if (name === undefined) return null
  const profile = Object.hasOwn(HDD_PROFILES, name) ? HDD_PROFILES[name] : undefined
  if (!profile) throw new CliError(`--emulate-hdd ${name} is not a known disk profile: use ${Object.keys(HDD_PROFILES).join(', ')}`, 2)
  return profile
}

/** The emulated disk of a mount (--emulate-hdd): its model (counters; the datapath's images are on it) and the device of plain files. */
export interface EmulatedDisk {
  model: HddModel
  deviceFor: DeviceFor
}

/** The emulated disk of a mount's settings (--emulate-hdd), or null. */
export function emulatedDisk(s: Settings): EmulatedDisk | null {
  if (!s.hdd) return null
  const model = new HddModel(s.hdd)
  return { model, deviceFor: (fd) => hddDevice(fd, model) }
}

/** Where the SSD store of a datastore lives when --ssd is not given. */
export function defaultSsdPath(store: string): string {
  return path.join(process.env.VMDI_STATE_DIR || '/var/lib/vmdi-fuse', `${runtimeId(store)}.sqlite`)
}

/** The datapath settings: options, or defaults sized to this machine; null for --no-introspect. */
function datapathSettings(cfg: MountConfig, store: string, mountpoint: string): DatapathSettings | null {
  if (cfg.cacheMode !== undefined && !CACHE_MODES.includes(cfg.cacheMode as CacheMode)) {
    throw new CliError(`--cache-mode ${cfg.cacheMode} is not a mode: use introspect (the default), conventional (benchmark baseline) or block-cache (benchmark peer: an SSD block cache)`, 2)
  }
  const ssdPath = path.resolve(cfg.ssd ?? defaultSsdPath(store))
  if (cfg.introspect === false) {
    refuseHeldBack(ssdPath, '--no-introspect')
    return null
  }
  const ramBytes = sizeOption(cfg.ramCache, '--ram-cache', Math.min(1 << 30, Math.floor(os.totalmem() / 16)))
  if (inside(store, ssdPath)) throw new CliError(`--ssd ${ssdPath} is inside the store ${store}: put the SSD store on the SSD, outside the datastore`, 2)
  if (inside(mountpoint, ssdPath)) throw new CliError(`--ssd ${ssdPath} is inside the mount point ${mountpoint}: put it outside`, 2)
  fs.mkdirSync(path.dirname(ssdPath), { recursive: true })
  const ssdMaxBytes = sizeOption(cfg.ssdMax, '--ssd-max', Math.max(64 << 20, Math.min(16 * 2 ** 30, Math.floor(freeBytes(path.dirname(ssdPath)) / 2))))
  if (ssdMaxBytes < 1 << 20) throw new CliError(`--ssd-max ${cfg.ssdMax} is below 1 MiB: give the SSD store room for at least 256 blocks`, 2)
  const cacheMode = (cfg.cacheMode ?? 'introspect') as CacheMode
  // The block cache redirects writes and destages what the store holds back, as introspection does.
  if (cacheMode === 'conventional') refuseHeldBack(ssdPath, '--cache-mode conventional')
  const smallFileBytes = sizeOption(cfg.smallFiles, '--small-files', DEFAULT_SMALL_FILE_BYTES)
  if (smallFileBytes > MAX_SMALL_FILE_BYTES) {
    throw new CliError(
      `--small-files ${cfg.smallFiles} is above ${formatSize(MAX_SMALL_FILE_BYTES, { unit: 'MiB', exact: true })}: larger files stream well from the HDD and would crowd the SSD store; use a smaller size, or 0 to turn it off`,
      2,
    )
  }
  const newDataBytes = Math.min(Math.floor(ssdMaxBytes / 2), sizeOption(cfg.newData, '--new-data', DEFAULT_NEW_DATA_BYTES))
  const ramFloor = !cfg.ramFloor || cfg.ramFloor === 'fair' ? 'fair' : sizeOption(cfg.ramFloor, '--ram-floor', 0)
  return {
    ramBytes,
    ssdPath,
    ssdMaxBytes,
    exclude: cfg.exclude ?? [],
    cacheMode,
    smallFileBytes,
    newDataBytes,
    ramFloor,
    bootFiles: cfg.bootFiles !== false,
    destageIntervalMs: Number(process.env.VMDI_DESTAGE_INTERVAL_MS) || undefined,
    introspectMemoryBytes: introspectMemory(cfg),
  }
}

/** --introspect-memory: default 1/8 of RAM, at most 4 GiB; at least 16 MiB (an image's map needs some). */
function introspectMemory(cfg: MountConfig): number {
  const bytes = sizeOption(cfg.introspectMemory, '--introspect-memory', Math.min(4 * 2 ** 30, Math.floor(os.totalmem() / 8)))
  if (bytes < 16 << 20) throw new CliError(`--introspect-memory ${cfg.introspectMemory} is below 16 MiB: images' maps need some RAM; use --no-introspect to introspect nothing`, 2)
  return bytes
}

/** Whether `p` is `dir` or lies below it. */
function inside(dir: string, p: string): boolean {
  const rel = path.relative(dir, p)
  return !rel.startsWith('..') && !path.isAbsolute(rel)
}

/** Free bytes of the file system holding `dir` (64 GiB when statvfs fails). */
function freeBytes(dir: string): number {
  const v = sys().statvfs(dir)
  return typeof v === 'number' ? 64 * 2 ** 30 : v[1] * v[4]
}

/** A size option's bytes, or `dflt` when it was not given; a bad size is a usage error naming the option. */
function sizeOption(v: string | undefined, flag: string, dflt: number): number {
  if (v === undefined) return dflt
  try {
    const n = parseSize(v, flag)
    if (n < 0) throw new Error(`${flag} must not be negative`)
    return n
  } catch (e) {
    throw new CliError(`${(e as Error).message}`, 2)
  }
}

/**
 * A mount that does not redirect (--no-introspect, --cache-mode conventional) must not
 * serve images whose latest blocks are still in the SSD store: refuse, naming the way out.
 */
function refuseHeldBack(ssdPath: string, why: string): void {
  if (!fs.existsSync(ssdPath)) return
  let ssd: SsdStore
  try {
    ssd = SsdStore.open(ssdPath)
  } catch {
    return // unusable: it cannot hold anything for us either; an introspecting mount reports it
  }
  const held = ssd.images().filter((i) => i.dirtyBlocks > 0)
  void ssd.close()
  if (held.length) {
    throw new CliError(
      `the SSD store ${ssdPath} still holds unwritten blocks of ${held.map((i) => `${i.path} (${i.dirtyBlocks})`).join(', ')}; a ${why} mount would serve stale bytes: ` +
        `mount once without ${why} (it destages them), or run vmdi-fuse recover --apply IMAGE`,
    )
  }
}

/** The mount log's line on the datapath: sizes, and which options were left at their defaults. */
export function datapathSummary(s: Settings): string {
  const d = s.datapath
  if (!d) return 'datapath off (--no-introspect): every file is a plain pass-through'
  const dflt = s.defaulted
  const placement =
    d.cacheMode === 'conventional'
      ? ', conventional cache mode (no classes)'
      : d.cacheMode === 'block-cache'
        ? ', block-cache mode (benchmark peer (f)): SSD block cache, LRU, 4 MiB sequential cutoff, write-back, no classes'
        : `, small files' data with the meta-data: ${d.smallFileBytes ? `up to ${formatSize(d.smallFileBytes, { unit: 'KiB', exact: true })}` : 'off'}${dflt.smallFiles ? ' (default; --small-files)' : ''}` +
        `, boot files' data with the meta-data: ${d.bootFiles ? 'on (default; --no-boot-files)' : 'off'}` +
        `, new data held on the SSD store: ${d.newDataBytes ? `up to ${formatSize(d.newDataBytes, { unit: 'MiB', exact: true })}` : 'off'}${dflt.newData ? ' (default: 1 GiB, at most half the cap; --new-data)' : ''}` +
        `, meta-data RAM kept per image against the others: ${d.ramFloor === 'fair' ? 'a fair share (the RAM cache over the images attached; default; --ram-floor)' : d.ramFloor ? formatSize(d.ramFloor, { unit: 'MiB', exact: true }) : 'off'}`
  return (
    `datapath: RAM cache ${formatSize(d.ramBytes, { unit: 'MiB', digits: 0 })}${dflt.ramCache ? ' (default: 1/16 of RAM, at most 1 GiB; --ram-cache)' : ''}, ` +
    `SSD store ${d.ssdPath}${dflt.ssd ? ' (default; --ssd)' : ''} capped at ${formatSize(d.ssdMaxBytes, { unit: 'GiB', digits: 2 })}${dflt.ssdMax ? ' (default: half its free space, at most 16 GiB; --ssd-max)' : ''}` +
    placement +
    `${d.exclude.length ? `, excluded: ${d.exclude.join(' ')}` : ''}`
  )
}
