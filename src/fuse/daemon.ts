// The mount's lifecycle: preflight, mount, serve, and a clean end on
// SIGINT/SIGTERM, `vmdi-fuse umount` or an outside `fusermount -u`: in-flight
// operations finish, store files are closed, exit status 0.
//
// Without --foreground the CLI re-runs itself detached (like every libfuse
// program, it returns once the mount is ready): the child reports "ready" or
// the one-line error over an IPC channel, then cuts it.
import { execFile, spawn } from 'child_process'
import fs from 'fs'
import path from 'path'
import type Fuse from 'fuse-native'
import { CliError } from '../errors'
import { log, setLogLevel } from '../log'
import { buildOps, OpTracker } from './ops'
import { escapeOptionValue, FIXED_OPTIONS, parseUserOptions } from './options'
import { StoreFs } from './passthrough'
import { checkFuseDevice, checkMountpoint, checkStore, lazyUnmount, loadFuseBinding } from './preflight'
import { readRecord, removeRecord, runtimePaths, serveControl, writeRecord, pidAlive, runtimeId } from './runtime'
import { Datapath } from '../placement/datapath'
import { parseSize } from '../size'
import { HddModel, LAPTOP_5400, type HddProfile } from '../store/hdd-model'
import { SsdStore } from '../store/ssd'
import { className } from '../introspect/classes'
import os from 'os'
import { sys } from '../native/sys'

import { VERSION } from '../root'
export { VERSION }

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
  /** Benchmark rig: the emulated disk profile (--emulate-hdd), and configuration (b) (--cache-mode conventional). */
  emulateHdd?: string
  cacheMode?: string
  /** --small-files SIZE: regular files up to SIZE have their data placed with the meta-data. */
  smallFiles?: string
  /** --new-data SIZE: writes to newly allocated blocks held on the SSD store up to SIZE. */
  newData?: string
  /** --no-boot-files: false; the guests' boot files are placed with the meta-data otherwise. */
  bootFiles?: boolean
}

/** How long a busy unmount waits for open files to close before the daemon exits anyway. */
const SHUTDOWN_GRACE_MS = 30_000
/** Operations running longer than this are logged (never abandoned: see README). */
const SLOW_OP_MS = 10_000

interface Prepared {
  store: string
  mountpoint: string
  extra: string[]
  datapath: { ramBytes: number; ssdPath: string; ssdMaxBytes: number; exclude: string[]; cacheMode: 'introspect' | 'conventional'; smallFileBytes: number; newDataBytes: number; bootFiles: boolean } | null
  hddProfile: HddProfile | null
}

/** --small-files default: regular files up to 32 KiB have their data placed with the meta-data. */
const DEFAULT_SMALL_FILE_BYTES = 32 << 10
const MAX_SMALL_FILE_BYTES = 1 << 20
/** --new-data default (and at most half the SSD store's cap). */
const DEFAULT_NEW_DATA_BYTES = 1 << 30

function mibText(n: number): string {
  return n % 2 ** 20 ? `${n} bytes` : `${n / 2 ** 20} MiB`
}

/** Emulated disk profiles for --emulate-hdd. */
export const HDD_PROFILES: Record<string, HddProfile> = { laptop5400: LAPTOP_5400 }

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

/** Where the SSD store of a datastore lives when --ssd is not given. */
export function defaultSsdPath(store: string): string {
  return path.join(process.env.VMDI_STATE_DIR || '/var/lib/vmdi-fuse', `${runtimeId(store)}.sqlite`)
}

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

/** The datapath settings: options, or defaults sized to this machine. */
function datapathSettings(cfg: MountConfig, store: string, mountpoint: string): Prepared['datapath'] {
  if (cfg.cacheMode !== undefined && cfg.cacheMode !== 'introspect' && cfg.cacheMode !== 'conventional') {
    throw new CliError(`--cache-mode ${cfg.cacheMode} is not a mode: use introspect (the default) or conventional (benchmark baseline)`, 2)
  }
  if (cfg.introspect === false) {
    refuseHeldBack(path.resolve(cfg.ssd ?? defaultSsdPath(store)), '--no-introspect')
    return null
  }
  const ramBytes = sizeOption(cfg.ramCache, '--ram-cache', Math.min(1 << 30, Math.floor(os.totalmem() / 16)))
  const ssdPath = path.resolve(cfg.ssd ?? defaultSsdPath(store))
  const rel = path.relative(store, ssdPath)
  if (!rel.startsWith('..') && !path.isAbsolute(rel)) throw new CliError(`--ssd ${ssdPath} is inside the store ${store}: put the SSD store on the SSD, outside the datastore`, 2)
  const relMp = path.relative(mountpoint, ssdPath)
  if (!relMp.startsWith('..') && !path.isAbsolute(relMp)) throw new CliError(`--ssd ${ssdPath} is inside the mount point ${mountpoint}: put it outside`, 2)
  fs.mkdirSync(path.dirname(ssdPath), { recursive: true })
  let free = 64 * 2 ** 30
  const v = sys().statvfs(path.dirname(ssdPath))
  if (typeof v !== 'number') free = v[1] * v[4]
  const ssdMaxBytes = sizeOption(cfg.ssdMax, '--ssd-max', Math.max(64 << 20, Math.min(16 * 2 ** 30, Math.floor(free / 2))))
  if (ssdMaxBytes < 1 << 20) throw new CliError(`--ssd-max ${cfg.ssdMax} is below 1 MiB: give the SSD store room for at least 256 blocks`, 2)
  const cacheMode = cfg.cacheMode === 'conventional' ? 'conventional' : 'introspect'
  if (cacheMode === 'conventional') refuseHeldBack(ssdPath, '--cache-mode conventional')
  const smallFileBytes = sizeOption(cfg.smallFiles, '--small-files', DEFAULT_SMALL_FILE_BYTES)
  if (smallFileBytes > MAX_SMALL_FILE_BYTES) throw new CliError(`--small-files ${cfg.smallFiles} is above ${MAX_SMALL_FILE_BYTES >> 20} MiB: larger files stream well from the HDD and would crowd the SSD store; use a smaller size, or 0 to turn it off`, 2)
  const newDataBytes = Math.min(Math.floor(ssdMaxBytes / 2), sizeOption(cfg.newData, '--new-data', DEFAULT_NEW_DATA_BYTES))
  return { ramBytes, ssdPath, ssdMaxBytes, exclude: cfg.exclude ?? [], cacheMode, smallFileBytes, newDataBytes, bootFiles: cfg.bootFiles !== false }
}

/** Every check that can fail before a mount exists. */
export function prepare(cfg: MountConfig): Prepared {
  const user = parseUserOptions(cfg.options)
  const store = checkStore(cfg.store)
  const mp = checkMountpoint(cfg.mountpoint, store, { force: cfg.force, nonempty: user.nonempty })
  checkFuseDevice()
  loadFuseBinding()
  const extra = FIXED_OPTIONS.filter(([o]) => o !== 'allow_other' && o !== 'default_permissions').map(([o]) => o)
  if (cfg.nfs && !user.extra.some((o) => o === 'noforget' || o.startsWith('remember='))) extra.push('noforget')
  // User values override our defaults of the same name (max_read=..., max_write=...).
  const userNames = new Set(user.extra.map((o) => o.split('=')[0]))
  const merged = extra.filter((o) => !userNames.has(o.split('=')[0])).concat(user.extra)
  if (!userNames.has('fsname')) merged.push(`fsname=${escapeOptionValue(store)}`)
  merged.push('subtype=vmdi-fuse')
  // fuse-native copies the option string into a 1024-byte buffer.
  if (merged.join(',').length > 900) throw new CliError('mount options are too long (over 900 characters): shorten -o fsname= or the store path')
  let hddProfile: HddProfile | null = null
  if (cfg.emulateHdd !== undefined) {
    hddProfile = HDD_PROFILES[cfg.emulateHdd] ?? null
    if (!hddProfile) throw new CliError(`--emulate-hdd ${cfg.emulateHdd} is not a known disk profile: use ${Object.keys(HDD_PROFILES).join(', ')}`, 2)
  }
  return { store, mountpoint: mp.path, extra: merged, datapath: datapathSettings(cfg, store, mp.path), hddProfile }
}

/** Mounts in this process and serves until the mount ends. Resolves once mounted. */
export async function runForeground(cfg: MountConfig, onReady?: () => void): Promise<void> {
  if (cfg.debug) setLogLevel('debug')
  const prep = prepare(cfg)
  const FuseCtor = loadFuseBinding()
  const store = new StoreFs(prep.store)
  const tracker = new OpTracker()
  let fuse: Fuse | null = null
  let ending = false
  let loopEnded = false
  let loopEndedWaiter: (() => void) | null = null

  const hdd = prep.hddProfile ? new HddModel(prep.hddProfile) : null
  if (hdd) {
    store.hdd = hdd
    log.info(`every HDD file read and write goes through an emulated disk (${prep.hddProfile!.name}): a benchmarking aid, not for production`)
  }
  let datapath: Datapath | null = null
  if (prep.datapath) {
    try {
      const interval = Number(process.env.VMDI_DESTAGE_INTERVAL_MS) || undefined
      datapath = new Datapath({ storeRoot: prep.store, ...prep.datapath, destageIntervalMs: interval, hdd })
    } catch (e) {
      throw new CliError(`${(e as Error).message}; or mount with --no-introspect (pure pass-through)`)
    }
    store.datapath = datapath
    const d = prep.datapath
    log.info(
      `datapath: RAM cache ${(d.ramBytes / 2 ** 20).toFixed(0)} MiB${cfg.ramCache ? '' : ' (default: 1/16 of RAM, at most 1 GiB; --ram-cache)'}, ` +
        `SSD store ${d.ssdPath}${cfg.ssd ? '' : ' (default; --ssd)'} capped at ${(d.ssdMaxBytes / 2 ** 30).toFixed(2)} GiB${cfg.ssdMax ? '' : ' (default: half its free space, at most 16 GiB; --ssd-max)'}` +
        (d.cacheMode === 'conventional' ? ', conventional cache mode (no classes)' : `, small files' data with the meta-data: ${d.smallFileBytes ? `up to ${d.smallFileBytes % 1024 ? `${d.smallFileBytes} bytes` : `${d.smallFileBytes >> 10} KiB`}` : 'off'}${cfg.smallFiles ? '' : ' (default; --small-files)'}` +
            `, boot files' data with the meta-data: ${d.bootFiles ? 'on (default; --no-boot-files)' : 'off'}` +
            `, new data held on the SSD store: ${d.newDataBytes ? `up to ${mibText(d.newDataBytes)}` : 'off'}${cfg.newData ? '' : ' (default: 1 GiB, at most half the cap; --new-data)'}`) +
        `${d.exclude.length ? `, excluded: ${d.exclude.join(' ')}` : ''}`,
    )
  } else log.info('datapath off (--no-introspect): every file is a plain pass-through')
  const ops = buildOps(store, tracker, () => fuse)
  fuse = new FuseCtor(prep.mountpoint, ops, {
    allowOther: true,
    defaultPermissions: true,
    // The binding's own 15 s timeout answers the kernel ETIMEDOUT while our I/O
    // may still fill the kernel's buffer. Off: a slow store makes callers wait,
    // as a local disk would; the watchdog below logs such operations.
    timeout: false,
    debug: cfg.debug,
    extraOptions: prep.extra,
    onExit: () => {
      loopEnded = true
      loopEndedWaiter?.()
      void finish('the mount was removed')
    },
  })

  if (!hdd) store.direct = (fh, fd) => fuse!.setDirect(fh, fd)

  await new Promise<void>((resolve, reject) => {
    fuse!.mount((err) => {
      if (err) {
        // A failed mount can leave a dead mount point behind: clear it.
        try {
          lazyUnmount(prep.mountpoint)
        } catch {
          /* nothing was mounted */
        }
        reject(new CliError(`mounting ${prep.store} on ${prep.mountpoint} failed: ${err.message} (libfuse's own message, if any, is above)`))
      } else resolve()
    })
  })

  if (datapath && process.env.VMDI_RAM_NATIVE !== 'off' && datapath.ram.capacity > 0 && fuse.ramInit(datapath.ram.capacity)) {
    // RAM-tier hits answered by the binding on the libfuse thread (no JS round trip).
    const f = fuse
    datapath.serveNatively(
      { slab: (i, b) => void f.ramSlab(i, b), store: (slot, key, src, servable) => f.ramStore(slot, key, src, 0, servable), drop: (slot) => void f.ramDrop(slot) },
      (out) => f.ramDrain(out),
    )
    if (datapath.servesNatively) store.ramServe = (fh, image) => (image ? f.ramFh(fh, image.id, image.fd) : f.ramFh(fh, null, -1))
  }

  const paths = runtimePaths(prep.mountpoint)
  let control: Awaited<ReturnType<typeof serveControl>>
  try {
    control = await serveControl(paths.socket, (req) => {
      if (req.cmd === 'status') return status()
      if (req.cmd === 'stats') {
        const hddStats = hdd ? { profile: prep.hddProfile!.name, ...hdd.stats } : null
        if (!datapath) return { mode: 'passthrough', ram: null, ssd: null, images: [], refused: [], hdd: hddStats }
        return { ...datapath.stats(), hdd: hddStats }
      }
      if (req.cmd === 'map') {
        // The live map of one image, as runs of 4 KiB file blocks (tests and debugging).
        const e = datapath?.images().find((x) => x.rel === String(req.image ?? '').replace(/^\/+/, ''))
        if (!e) throw new Error(`no image ${String(req.image)} is attached to this mount`)
        return { path: e.rel, scan: e.scan, runs: [...e.map.runs()].map(([s, c, k]) => [s, c, className(k)]) }
      }
      if (req.cmd === 'destage') {
        if (!datapath) throw new Error(`${prep.mountpoint} is mounted with --no-introspect: nothing is ever held back from the HDD`)
        return datapath.destageCommand(typeof req.image === 'string' ? req.image : undefined)
      }
      throw new Error(`unknown request ${JSON.stringify(req.cmd)}`)
    })
  } catch (e) {
    lazyUnmount(prep.mountpoint)
    throw new CliError(`the control socket ${paths.socket} could not be created (${(e as Error).message}): check that ${path.dirname(paths.socket)} is writable; nothing is mounted`)
  }
  writeRecord({
    pid: process.pid,
    store: prep.store,
    mountpoint: prep.mountpoint,
    socket: paths.socket,
    log: cfg.log,
    started: new Date().toISOString(),
    version: VERSION,
  })
  const watchdog = setInterval(() => {
    const slow = [...tracker.slow(SLOW_OP_MS), ...fuse!.directSlow(SLOW_OP_MS).map((o) => ({ ...o, path: store.pathOf(o.fh) }))]
    for (const o of slow) {
      log.warn(`slow operation: ${o.op} ${o.path} has waited ${Math.round((Date.now() - o.started) / 1000)} s for the store (still waiting, not abandoned)`)
    }
  }, SLOW_OP_MS / 2)
  watchdog.unref()

  const onSignal = (sig: NodeJS.Signals) => {
    log.info(`${sig} received: unmounting ${prep.mountpoint}`)
    void unmountAndFinish()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  // A bug in background work must not take the mount (and every VM on it) down.
  process.on('unhandledRejection', (e) => log.error(`internal error in background work (the mount goes on): ${(e as Error)?.stack ?? e}`))
  process.on('SIGHUP', () => log.info('SIGHUP ignored (nothing to reload)'))

  log.info(`mounted ${prep.store} on ${prep.mountpoint} (pid ${process.pid}, options ${prep.extra.join(',')})`)
  onReady?.()

  function status() {
    return {
      pid: process.pid,
      version: VERSION,
      store: prep.store,
      mountpoint: prep.mountpoint,
      options: prep.extra,
      openFiles: store.openFiles(),
      inFlight: tracker.inFlight.size,
      ops: tracker.counts,
      errors: tracker.errors,
      threads: fuse!.threadStats(),
      direct: fuse!.directStats(),
      ramNative: fuse!.ramStats(),
      datapath: datapath ? { images: datapath.images().length, dirtyBlocks: datapath.stats().ssd.dirtyBlocks } : null,
      memory: process.memoryUsage(),
    }
  }

  async function unmountAndFinish(): Promise<void> {
    if (ending) return
    const busy = await new Promise<boolean>((res) => {
      execFile('fusermount', ['-u', prep.mountpoint], (err, _out, stderr) => {
        if (!err) return res(false)
        log.warn(`unmounting ${prep.mountpoint}: ${String(stderr).trim() || err.message}`)
        res(true)
      })
    })
    if (busy && !loopEnded) {
      log.warn(`${prep.mountpoint} is busy: detaching it lazily; open files are served for up to ${SHUTDOWN_GRACE_MS / 1000} s more`)
      try {
        lazyUnmount(prep.mountpoint)
      } catch (e) {
        log.error(`lazy unmount of ${prep.mountpoint} failed: ${(e as Error).message}`)
      }
      await Promise.race([
        new Promise<void>((res) => (loopEndedWaiter = res)),
        new Promise<void>((res) => setTimeout(res, SHUTDOWN_GRACE_MS).unref()),
      ])
    }
    await finish(busy ? 'lazy unmount' : 'unmounted')
  }

  async function finish(why: string): Promise<void> {
    if (ending) return
    ending = true
    const n = tracker.inFlight.size
    if (n) log.info(`waiting for ${n} operation(s) in flight`)
    await tracker.idle()
    if (datapath) {
      store.stopRamServe()
      try {
        await datapath.close()
      } catch (e) {
        log.error(`closing the datapath: ${(e as Error).message}; the SSD store keeps what it holds for the next mount`)
      }
    }
    const open = store.openFiles()
    await store.closeAll()
    control.close()
    removeRecord(prep.mountpoint)
    log.info(`${prep.mountpoint}: ${why}; ${open} open file(s) closed; exiting`)
    process.exit(0)
  }
}

/**
 * Detached start: re-run this CLI with --foreground in a new session, logs to
 * cfg.log; resolve when the child says the mount is ready, reject with its error.
 */
export async function runDetached(cfg: MountConfig, argv: string[]): Promise<{ pid: number; log: string }> {
  // Fail fast, in the caller's terminal, on everything checkable before forking.
  prepare(cfg)
  const logPath = cfg.log ?? '/var/log/vmdi-fuse.log'
  fs.mkdirSync(path.dirname(logPath), { recursive: true })
  const logFd = fs.openSync(logPath, 'a')
  const child = spawn(process.execPath, [...process.execArgv, ...argv, '--foreground', '--log', logPath], {
    detached: true,
    stdio: ['ignore', logFd, logFd, 'ipc'],
    env: { ...process.env, VMDI_FUSE_DETACHED: '1' },
  })
  fs.closeSync(logFd)
  return new Promise((resolve, reject) => {
    let settled = false
    child.on('message', (m: { ready?: boolean; error?: string }) => {
      if (settled) return
      settled = true
      child.disconnect()
      child.unref()
      if (m.ready) resolve({ pid: child.pid!, log: logPath })
      else reject(new CliError(m.error ?? 'the daemon failed to start'))
    })
    child.on('exit', (code) => {
      if (settled) return
      settled = true
      reject(new CliError(`the daemon exited (status ${code}) before the mount was ready: see ${logPath}`))
    })
  })
}

/** `vmdi-fuse umount`: unmount and wait for the daemon to exit. */
export async function unmount(mountpoint: string, opts: { lazy: boolean; timeoutMs?: number }): Promise<string> {
  let real: string
  try {
    real = fs.realpathSync(mountpoint)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOTCONN') real = path.resolve(mountpoint)
    else throw new CliError(`${mountpoint} does not exist: name the mount point of a running vmdi-fuse`)
  }
  const rec = readRecord(real)
  const { readMounts } = await import('./preflight')
  const mounted = readMounts().find((m) => m.mountpoint === real)
  if (!mounted) {
    if (rec) removeRecord(real)
    throw new CliError(`${mountpoint} is not mounted`)
  }
  if (mounted.fstype !== 'fuse.vmdi-fuse') throw new CliError(`${mountpoint} is a ${mounted.fstype} mount, not vmdi-fuse: use umount`)
  const args = opts.lazy ? ['-u', '-z', real] : ['-u', real]
  await new Promise<void>((resolve, reject) => {
    execFile('fusermount', args, (err, _o, stderr) => {
      if (!err) return resolve()
      const msg = String(stderr).trim()
      if (/busy/i.test(msg)) {
        reject(new CliError(`${mountpoint} is busy: close the files open in it (fuser -vm ${mountpoint} lists them) or use vmdi-fuse umount --lazy ${mountpoint}`))
      } else reject(new CliError(`unmounting ${mountpoint} failed: ${msg || err.message}`))
    })
  })
  if (rec && pidAlive(rec.pid)) {
    const deadline = Date.now() + (opts.timeoutMs ?? 60_000)
    while (pidAlive(rec.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
    if (pidAlive(rec.pid)) throw new CliError(`${mountpoint} is unmounted but daemon pid ${rec.pid} has not exited yet: see ${rec.log ?? 'its log'}`)
  }
  return real
}
