// The mount's lifecycle: preflight, mount, serve, and a clean end on
// SIGINT/SIGTERM, `vmdi-fuse umount` or an outside `fusermount -u`: in-flight
// operations finish, store files are closed, exit status 0.
//
// Without --foreground the CLI re-runs itself detached (like every libfuse
// program, it returns once the mount is ready): the child reports "ready" or
// the one-line error over an IPC channel, then cuts it.
import { execFile, spawn } from 'child_process'
import fs from 'fs'
import type http from 'http'
import type net from 'net'
import path from 'path'
import { promisify } from 'util'
import type Fuse from 'fuse-native'
import { askControl, dispatch, type ControlHandlers, type DestageAnswer, type MapAnswer, type StatsAnswer, type StatusAnswer } from '../control/protocol'
import { CliError } from '../errors'
import { className } from '../introspect/classes'
import { log, setLogLevel } from '../log'
import { Datapath } from '../placement/datapath'
import { progressStats } from '../placement/stats'
import type { NativeDataBinding } from '../placement/native-data'
import { VERSION } from '../root'
import { datapathSummary, emulatedDisk, readSettings, type EmulatedDisk, type MountConfig, type Settings } from '../settings'
import { buildOps, OpTracker } from './ops'
import { ssdLockPath, storeLockPath, takeLock } from './lock'
import { serveMetrics } from './metrics'
import { sdNotify } from './notify'
import { StoreFs } from './passthrough'
import { lazyUnmount, loadFuseBinding, readMounts } from './preflight'
import { nextGenerationBase, setGenerationBase } from './generation'
import { pidAlive, readRecord, removeRecord, runtimePaths, serveControl, writeRecord, type RuntimeRecord } from './runtime'

export { VERSION }
export type { MountConfig }

/** How long a busy unmount waits for open files to close before the daemon exits anyway. */
const SHUTDOWN_GRACE_MS = 30_000
/** Operations running longer than this are logged (never abandoned: see README). */
const SLOW_OP_MS = 10_000
/** `vmdi-fuse umount` gives up on a daemon that has made no progress (no block written back) for this long. */
const UNMOUNT_STUCK_MS = 60_000
/** While ending, how often the log says what the daemon still waits for; a step other than destage that makes no progress this long ends the process. */
const ENDING_REPORT_MS = 10_000
const ENDING_STUCK_MS = 90_000
/** How often systemd hears the scans' progress (STATUS=). */
const NOTIFY_STATUS_MS = 2_000

/** A file's size, 0 when it is missing. */
function fileBytes(p: string): number {
  try {
    return fs.statSync(p).size
  } catch {
    return 0
  }
}

/** Mounts in this process and serves until the mount ends. Resolves once mounted. */
export async function runForeground(cfg: MountConfig, onReady?: () => void): Promise<void> {
  if (cfg.debug) setLogLevel('debug')
  const s = readSettings(cfg)
  // One daemon per datastore and per SSD store, before anything is opened or mounted.
  takeLock(storeLockPath(s.store), `the store ${s.store}`, s.mountpoint)
  if (s.datapath) takeLock(ssdLockPath(s.datapath.ssdPath), `the SSD store ${s.datapath.ssdPath}`, s.mountpoint)
  const m = new Mount(s)
  await m.serveMetrics()
  await m.mount()
  m.serveRamNatively()
  m.serveDataNatively()
  await m.serveControl()
  m.writeRecord()
  m.watchSlowOps()
  m.handleSignals()
  log.info(`mounted ${m.s.store} on ${m.s.mountpoint} (pid ${process.pid}, options ${m.s.fuseOptions.join(',')})`)
  m.notifySystemd()
  onReady?.()
}

/** The datapath of an introspecting mount, or null (--no-introspect); an unusable SSD store names the way out. */
function openDatapath(s: Settings, hdd: EmulatedDisk | null): Datapath | null {
  if (!s.datapath) return null
  try {
    return new Datapath({ storeRoot: s.store, ...s.datapath, hdd: hdd?.model ?? null })
  } catch (e) {
    throw new CliError(`${(e as Error).message}; or mount with --no-introspect (pure pass-through)`)
  }
}

/** One mount served by this process: its pieces, the control socket's answers, and its end. */
class Mount {
  readonly store: StoreFs
  readonly tracker = new OpTracker()
  /** The emulated disk under every HDD file (--emulate-hdd), or null. */
  readonly hdd: EmulatedDisk | null
  readonly datapath: Datapath | null
  private fuse: Fuse | null = null
  private control: net.Server | null = null
  private metrics: http.Server | null = null
  private ending = false
  /** The binding's loop has ended (the mount is gone); `loopEndedWaiter` hears of it. */
  private loopEnded = false
  private loopEndedWaiter: (() => void) | null = null
  /** What the end is waiting for now (logged while it takes long), and since when. */
  private endingStep = ''
  private endingStepSince = 0
  private endingWatch: NodeJS.Timeout | null = null

  constructor(readonly s: Settings) {
    this.store = new StoreFs(s.store)
    this.hdd = emulatedDisk(s)
    if (this.hdd) {
      this.store.hddFor = this.hdd.deviceFor
      log.info(`every HDD file read and write goes through an emulated disk (${s.hdd!.name}): a benchmarking aid, not for production`)
    }
    this.datapath = openDatapath(s, this.hdd)
    if (this.datapath) this.store.datapath = this.datapath
    log.info(datapathSummary(s))
  }

  /** The binding, once mount() has made it. */
  private get binding(): Fuse {
    if (!this.fuse) throw new Error('the mount has no binding yet')
    return this.fuse
  }

  /** Mounts; a failed mount leaves nothing mounted behind. */
  async mount(): Promise<void> {
    const FuseCtor = loadFuseBinding()
    // File handles of an earlier daemon must fail (ESTALE), not name the new holder of their node id.
    setGenerationBase(nextGenerationBase())
    const fuse = new FuseCtor(this.s.mountpoint, buildOps(this.store, this.tracker, () => this.fuse), {
      allowOther: true,
      defaultPermissions: true,
      // The binding's own 15 s timeout answers the kernel ETIMEDOUT while our I/O
      // may still fill the kernel's buffer. Off: a slow store makes callers wait,
      // as a local disk would; the watchdog (watchSlowOps) logs such operations.
      timeout: false,
      debug: this.s.debug,
      extraOptions: this.s.fuseOptions,
      onExit: () => {
        this.loopEnded = true
        this.loopEndedWaiter?.()
        void this.finish('the mount was removed')
      },
    })
    this.fuse = fuse
    if (!this.hdd) this.store.direct = (fh, fd) => fuse.setDirect(fh, fd)
    try {
      await promisify(fuse.mount.bind(fuse))()
    } catch (err) {
      // A failed mount can leave a dead mount point behind: clear it.
      try {
        lazyUnmount(this.s.mountpoint)
      } catch {
        /* nothing was mounted */
      }
      throw new CliError(`mounting ${this.s.store} on ${this.s.mountpoint} failed: ${(err as Error).message} (libfuse's own message, if any, is above)`)
    }
  }

  /** RAM-tier hits answered by the binding on the libfuse thread (no JS round trip), unless VMDI_RAM_NATIVE=off. */
  serveRamNatively(): void {
    const d = this.datapath
    const f = this.binding
    if (!d || process.env.VMDI_RAM_NATIVE === 'off' || d.ram.capacity === 0 || !f.ramInit(d.ram.capacity)) return
    d.serveNatively(
      { slab: (i, b) => void f.ramSlab(i, b), store: (slot, key, src, servable) => f.ramStore(slot, key, src, 0, servable), drop: (slot) => void f.ramDrop(slot) },
      (out) => f.ramDrain(out),
    )
    if (d.servesNatively) this.store.ramServe = (fh, image) => (image ? f.ramFh(fh, image.id, image.fd) : f.ramFh(fh, null, -1))
  }

  /**
   * Images' data blocks served by the binding on the libfuse threads (the native
   * data path, src/placement/native-data.ts), unless VMDI_DATA_NATIVE=off; not
   * under --emulate-hdd (the emulated disk must see every HDD I/O).
   */
  serveDataNatively(): void {
    const d = this.datapath
    const f = this.binding
    if (!d || this.hdd || process.env.VMDI_DATA_NATIVE === 'off') return
    const binding: NativeDataBinding = {
      create: (image, fd) => f.dataNew(image, fd),
      set: (t, start, count, state) => void f.dataSet(t, start, count, state),
      clamp: (t, start, count, max) => void f.dataClamp(t, start, count, max),
      get: (t, block) => f.dataGet(t, block),
      size: (t, bytes) => void f.dataSize(t, bytes),
      readsToJs: (t, on) => void f.dataReadsToJs(t, on),
      stats: (t) => f.dataStats(t),
      retire: (t) => void f.dataRetire(t),
    }
    if (!d.serveDataNatively(binding, (e) => this.store.serveImageData(e), (e) => this.store.stopImageData(e))) return
    this.store.dataServe = (fh, image) => f.dataFh(fh, image?.state.native?.active ? image.state.native.table : null)
  }

  /** The control socket (status, stats, map, destage); without it nothing stays mounted. */
  async serveControl(): Promise<void> {
    const { socket } = runtimePaths(this.s.mountpoint)
    const handlers: ControlHandlers = {
      status: () => this.status(),
      stats: () => this.stats(),
      map: (req) => this.map(req.image),
      destage: (req) => this.destage(req.image),
    }
    try {
      this.control = await serveControl(socket, (raw) => dispatch(handlers, raw))
    } catch (e) {
      lazyUnmount(this.s.mountpoint)
      throw new CliError(`the control socket ${socket} could not be created (${(e as Error).message}): check that ${path.dirname(socket)} is writable; nothing is mounted`)
    }
  }

  /** --metrics: GET /metrics, listening before the mount exists (a port in use mounts nothing). */
  async serveMetrics(): Promise<void> {
    if (!this.s.metrics) return
    const ssdPath = this.s.datapath?.ssdPath ?? null
    this.metrics = await serveMetrics(this.s.metrics, () => ({
      status: this.status(),
      stats: this.stats(),
      latency: this.tracker.latency,
      ssdFileBytes: ssdPath ? fileBytes(ssdPath) + fileBytes(`${ssdPath}-wal`) : null,
    }))
    log.info(`metrics on http://${this.s.metrics.host.includes(':') ? `[${this.s.metrics.host}]` : this.s.metrics.host}:${this.s.metrics.port}/metrics`)
  }

  /** Under systemd (Type=notify): READY=1 now, then a STATUS= line with the scans' and preloads' progress every few seconds. */
  notifySystemd(): void {
    if (!sdNotify(`READY=1\nMAINPID=${process.pid}\nSTATUS=${this.serviceStatus()}`)) return
    let last = ''
    const t = setInterval(() => {
      const line = this.serviceStatus()
      if (line !== last && !this.ending) sdNotify(`STATUS=${line}`)
      last = line
    }, NOTIFY_STATUS_MS)
    t.unref()
  }

  /** One line for `systemctl status`: what is mounted, and the scans and preloads still running. */
  serviceStatus(): string {
    const head = `serving ${this.s.store} on ${this.s.mountpoint}`
    if (!this.datapath) return `${head} (pass-through)`
    const st = this.datapath.stats()
    const busy: string[] = []
    let done = 0
    for (const im of st.images) {
      const p = im.progress.scan.state === 'running' ? ['scan', im.progress.scan] as const : im.progress.preload.state === 'running' ? ['preload', im.progress.preload] as const : null
      if (!p) {
        if (im.scan.state === 'done') done++
        continue
      }
      const pct = p[1].totalBlocks ? Math.floor((100 * p[1].doneBlocks) / p[1].totalBlocks) : 0
      busy.push(`${im.path} ${p[0]} ${pct}%`)
    }
    return `${head}; ${st.images.length} image(s), ${done} scanned${busy.length ? `; ${busy.slice(0, 3).join(', ')}${busy.length > 3 ? ` and ${busy.length - 3} more` : ''}` : ''}; ${st.ssd.dirtyBlocks} dirty block(s)`
  }

  /** /run/vmdi-fuse/<id>.json: how `vmdi-fuse umount`, status and stats find this daemon. */
  writeRecord(): void {
    writeRecord({
      pid: process.pid,
      store: this.s.store,
      mountpoint: this.s.mountpoint,
      socket: runtimePaths(this.s.mountpoint).socket,
      log: this.s.log,
      started: new Date().toISOString(),
      version: VERSION,
    })
  }

  /** Logs operations that have waited on the store for more than SLOW_OP_MS (they are never abandoned). */
  watchSlowOps(): void {
    const watchdog = setInterval(() => {
      const direct = this.binding.directSlow(SLOW_OP_MS).map((o) => ({ ...o, path: this.store.pathOf(o.fh) }))
      for (const o of [...this.tracker.slow(SLOW_OP_MS), ...direct]) {
        log.warn(`slow operation: ${o.op} ${o.path} has waited ${Math.round((Date.now() - o.started) / 1000)} s for the store (still waiting, not abandoned)`)
      }
    }, SLOW_OP_MS / 2)
    watchdog.unref()
  }

  /** SIGINT and SIGTERM unmount; SIGHUP is ignored; a bug in background work is logged, never fatal. */
  handleSignals(): void {
    const onSignal = (sig: NodeJS.Signals) => {
      log.info(`${sig} received: unmounting ${this.s.mountpoint}`)
      void this.unmountAndFinish()
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    // A bug in background work must not take the mount (and every VM on it) down.
    process.on('unhandledRejection', (e) => log.error(`internal error in background work (the mount goes on): ${(e as Error)?.stack ?? e}`))
    process.on('SIGHUP', () => log.info('SIGHUP ignored (nothing to reload)'))
  }

  status(): StatusAnswer {
    const fuse = this.binding
    return {
      pid: process.pid,
      version: VERSION,
      store: this.s.store,
      mountpoint: this.s.mountpoint,
      options: this.s.fuseOptions,
      openFiles: this.store.openFiles(),
      inFlight: this.tracker.inFlight.size,
      ops: this.tracker.counts,
      errors: this.tracker.errors,
      threads: fuse.threadStats(),
      direct: fuse.directStats(),
      ramNative: fuse.ramStats(),
      datapath: this.datapath ? { images: this.datapath.images().length, dirtyBlocks: this.datapath.stats().ssd.dirtyBlocks } : null,
      images: this.datapath ? this.datapath.images().map((e) => ({ path: e.rel, scan: e.scan.state, progress: { scan: progressStats(e.progress.scan), preload: progressStats(e.progress.preload) } })) : [],
      memory: process.memoryUsage(),
    }
  }

  stats(): StatsAnswer {
    const hdd = this.hdd && this.s.hdd ? { profile: this.s.hdd.name, ...this.hdd.model.stats } : null
    if (!this.datapath) return { mode: 'passthrough', ram: null, ssd: null, images: [], refused: [], hdd }
    return { ...this.datapath.stats(), hdd }
  }

  /** The live map of one image, as runs of 4 KiB file blocks (tests and debugging). */
  map(image: string): MapAnswer {
    const e = this.datapath?.images().find((x) => x.rel === image.replace(/^\/+/, ''))
    if (!e) throw new Error(`no image ${image} is attached to this mount`)
    return { path: e.rel, scan: e.scan, runs: [...e.map.runs()].map(([s, c, k]) => [s, c, className(k)]) }
  }

  destage(image: string | undefined): Promise<DestageAnswer> {
    if (!this.datapath) throw new Error(`${this.s.mountpoint} is mounted with --no-introspect: nothing is ever held back from the HDD`)
    return this.datapath.destageCommand(image)
  }

  /** SIGINT/SIGTERM: unmount (lazily when busy, serving open files for up to SHUTDOWN_GRACE_MS), then finish. */
  async unmountAndFinish(): Promise<void> {
    if (this.ending || this.endingWatch) return
    this.step('fusermount -u')
    const busy = !(await fusermountU(this.s.mountpoint))
    if (busy && !this.loopEnded) {
      this.step('open files to close after a lazy unmount')
      log.warn(`${this.s.mountpoint} is busy: detaching it lazily; open files are served for up to ${SHUTDOWN_GRACE_MS / 1000} s more`)
      try {
        lazyUnmount(this.s.mountpoint)
      } catch (e) {
        log.error(`lazy unmount of ${this.s.mountpoint} failed: ${(e as Error).message}`)
      }
      await Promise.race([
        new Promise<void>((res) => (this.loopEndedWaiter = res)),
        new Promise<void>((res) => setTimeout(res, SHUTDOWN_GRACE_MS).unref()),
      ])
    }
    await this.finish(busy ? 'lazy unmount' : 'unmounted')
  }

  /**
   * The end's current step. From the first step on, the log says every
   * ENDING_REPORT_MS what the end still waits for; a step other than the
   * destage that makes no progress for ENDING_STUCK_MS ends the process
   * (exit 1): what the SSD store holds is committed and written back by the
   * next mount, and a daemon that never exits keeps the store locked.
   */
  private step(what: string): void {
    this.endingStep = what
    this.endingStepSince = Date.now()
    this.endingWatch ??= setInterval(() => {
      const ms = Date.now() - this.endingStepSince
      const ops = [...this.tracker.inFlight.values()].slice(0, 5).map((o) => `${o.op} ${o.path}`)
      log.warn(`ending: still waiting for ${this.endingStep} after ${Math.round(ms / 1000)} s (${this.tracker.inFlight.size} operation(s) in flight${ops.length ? `: ${ops.join(', ')}` : ''})`)
      if (ms >= ENDING_STUCK_MS && !this.endingStep.startsWith('destage')) {
        log.error(`ending: ${this.endingStep} made no progress for ${Math.round(ms / 1000)} s: exiting without it (the SSD store keeps what it holds for the next mount)`)
        process.exit(1)
      }
    }, ENDING_REPORT_MS)
  }

  /** The end, once: in-flight operations finish, the datapath destages and closes, store files close, exit 0. */
  async finish(why: string): Promise<void> {
    if (this.ending) return
    this.ending = true
    sdNotify(`STOPPING=1\nSTATUS=${why}: destaging and closing`)
    this.metrics?.close()
    const n = this.tracker.inFlight.size
    if (n) log.info(`waiting for ${n} operation(s) in flight`)
    this.step('operations in flight')
    await this.tracker.idle()
    if (this.datapath) {
      this.step('destage and close of the datapath')
      this.store.stopRamServe()
      this.store.stopImageData(null)
      try {
        await this.datapath.close()
      } catch (e) {
        log.error(`closing the datapath: ${(e as Error).message}; the SSD store keeps what it holds for the next mount`)
      }
    }
    const open = this.store.openFiles()
    this.step('closing store files')
    await this.store.closeAll()
    this.control?.close()
    removeRecord(this.s.mountpoint)
    log.info(`${this.s.mountpoint}: ${why}; ${open} open file(s) closed; exiting`)
    process.exit(0)
  }
}

/** `fusermount -u`: whether it unmounted (a failure, usually "busy", is logged). */
function fusermountU(mountpoint: string): Promise<boolean> {
  return new Promise((res) => {
    execFile('fusermount', ['-u', mountpoint], (err, _out, stderr) => {
      if (!err) return res(true)
      log.warn(`unmounting ${mountpoint}: ${String(stderr).trim() || err.message}`)
      res(false)
    })
  })
}

/**
 * Detached start: re-run this CLI with --foreground in a new session, logs to
 * cfg.log; resolve when the child says the mount is ready, reject with its error.
 */
export async function runDetached(cfg: MountConfig, argv: string[]): Promise<{ pid: number; log: string }> {
  // Fail fast, in the caller's terminal, on everything checkable before forking.
  readSettings(cfg)
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
export async function unmount(mountpoint: string, opts: { lazy: boolean; timeoutMs?: number; progress?: (line: string) => void }): Promise<string> {
  let real: string
  try {
    real = fs.realpathSync(mountpoint)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOTCONN') real = path.resolve(mountpoint)
    else throw new CliError(`${mountpoint} does not exist: name the mount point of a running vmdi-fuse`)
  }
  const rec = readRecord(real)
  const mounted = readMounts().find((m) => m.mountpoint === real)
  if (!mounted) {
    if (rec) removeRecord(real)
    throw new CliError(`${mountpoint} is not mounted`)
  }
  if (mounted.fstype !== 'fuse.vmdi-fuse') throw new CliError(`${mountpoint} is a ${mounted.fstype} mount, not vmdi-fuse: use umount`)
  if (opts.lazy && rec && pidAlive(rec.pid)) {
    // The daemon's own SIGTERM path: unmount, or when busy detach lazily and serve open files
    // for up to SHUTDOWN_GRACE_MS more, then destage and exit (README, "the mount").
    process.kill(rec.pid, 'SIGTERM')
  } else await new Promise<void>((resolve, reject) => {
    const args = opts.lazy ? ['-u', '-z', real] : ['-u', real]
    execFile('fusermount', args, (err, _o, stderr) => {
      if (!err) return resolve()
      const msg = String(stderr).trim()
      if (/busy/i.test(msg)) {
        reject(new CliError(`${mountpoint} is busy: close the files open in it (fuser -vm ${mountpoint} lists them) or use vmdi-fuse umount --lazy ${mountpoint}`))
      } else reject(new CliError(`unmounting ${mountpoint} failed: ${msg || err.message}`))
    })
  })
  if (rec) await waitForExit(real, rec, opts)
  return real
}

/** The line for a daemon that died under a CLI request. */
export function daemonExited(mountpoint: string, rec: RuntimeRecord): string {
  return `the daemon of ${mountpoint} (pid ${rec.pid}) exited during the request without ending cleanly: see ${rec.log ?? 'its log'}; clear its dead mount (fusermount -u -z ${mountpoint}) and mount again (the next mount finishes writing back what the SSD store holds)`
}

/**
 * `vmdi-fuse umount`'s wait for the daemon's exit: as long as it progresses (its unmount destage
 * writes the SSD store's blocks back, shown on stderr), however long that takes; an error when it
 * makes no progress for `timeoutMs` (stuck), or dies before ending cleanly (its record left behind).
 */
async function waitForExit(real: string, rec: RuntimeRecord, opts: { timeoutMs?: number; progress?: (line: string) => void }): Promise<void> {
  const stuckMs = opts.timeoutMs ?? UNMOUNT_STUCK_MS
  let lastDirty: number | null = null
  let lastProgress = Date.now()
  let lastShown = 0
  let ssd: string | null = null
  while (pidAlive(rec.pid)) {
    try {
      const st = await askControl(rec.socket, { cmd: 'status' }, 2_000)
      const dirty = st.datapath?.dirtyBlocks ?? 0
      if (lastDirty === null || dirty < lastDirty) lastProgress = Date.now()
      if (ssd === null && dirty > 0) ssd = (await askControl(rec.socket, { cmd: 'stats' }, 2_000).catch(() => null))?.ssd?.path ?? null
      lastDirty = dirty
      if (dirty > 0 && Date.now() - lastShown >= 2_000) {
        lastShown = Date.now()
        opts.progress?.(`${real}: daemon pid ${rec.pid} is writing back what the SSD store holds to the HDD files: ${dirty} block(s) left`)
      }
    } catch {
      /* between its last answer and its exit, or busy: the clock below decides */
    }
    if (!pidAlive(rec.pid)) break
    if (Date.now() - lastProgress > stuckMs) {
      throw new CliError(`${real} is unmounted but daemon pid ${rec.pid} has made no progress for ${Math.round(stuckMs / 1000)} s${lastDirty ? ` (${lastDirty} block(s) still to write back to the HDD files)` : ''}: it looks stuck; see ${rec.log ?? 'its log'}`)
    }
    await new Promise((r) => setTimeout(r, 250))
  }
  // A clean end removes the record; a daemon that died (kill -9, a crash) leaves it.
  if (!readRecord(real)) return
  removeRecord(real)
  const where = ssd ? `the SSD store ${ssd}` : 'the SSD store'
  if (lastDirty === 0) throw new CliError(`the daemon of ${real} (pid ${rec.pid}) died before ending cleanly (no block was left to write back when last asked): see ${rec.log ?? 'its log'}`)
  throw new CliError(
    `the daemon of ${real} (pid ${rec.pid}) died during its unmount destage with ${lastDirty ?? 'an unknown number of'} block(s) still only in ${where}: the HDD files are not whole (do not copy them); mount the store again (the next mount writes them back), then vmdi-fuse umount ${real}; see ${rec.log ?? 'its log'}`,
  )
}
