// npm run bench -- --fleet: many VMs on one datastore (issue 18, item 6).
//
//   node dist/scripts/bench.js --fleet [--quick] [--ns 1,4,16] [--configs a,b,c,e,f]
//        [--parts boot,interference,bigstore] [--ram-cache SIZE] [--vm-memory SIZE|off]
//        [--out DIR] [--json FILE] [--keep]
//
// Every VM is a copy of a cached benchmark image (scripts/bench/images.ts, at
// scale 0.1: the OS image's boot list is 210 files, 61 MB; data images of
// 9,000 files) in one
// datastore, played by loop devices (losetup --direct-io=on) and guest mounts,
// its workload in a memory cgroup of the VM's size (cgroup.ts). All VMs of a
// run share one vmdi-fuse mount and one emulated disk (--emulate-hdd
// laptop5400; (e): the host disk). Parts:
//
//  boot (i)+(iv): N VMs (N = 1, 4, 16) boot at once; the time until the last
//    has booted. Configurations that keep state on the SSD (c, e, f) first
//    live a day: a mount where every VM is attached and booted once ((c)/(e):
//    scans, preloads and the learnt boot set; (f): its cache fills), a mount
//    on the host disk where other disks see random reads of twice the SSD
//    cap (the datastore's other traffic, not timed), then the timed mount.
//    (a) and (b) keep nothing across a restart: their timed mount is fresh.
//    The first mount also gives (iv): each image's scan start after its attach.
//  interference (ii): K VMs run du, find and stat on their data images, alone
//    (the K together) and while 2 VMs stream big disks (sequential 1 MiB
//    direct reads, looping); each VM's runtime under streams over its
//    runtime without.
//  bigstore (iii): M VMs' data images and stream disks hold ≥ 10× the SSD
//    cap; after a day (attach, one du/find pass, random reads of twice the
//    cap), du, then find, then rm -rf on every VM at once.
//
// Output: DIR/fleet.md, DIR/fleet.json (and --json FILE); progress on stderr.

import fs from 'fs'
import os from 'os'
import path from 'path'
import { spawnSync } from 'child_process'
import { PROJECT_ROOT } from '../../src/root'
import { memoryCgroupsAvailable, vmMemory, type VmMemory } from './cgroup'
import { BuiltImage, ensureImages, ImageSet } from './images'
import { attachLoop, Cleanup, CLI, dropCaches, FuseMount, isMounted, mountFuse, mountGuest, type MountStats } from './rig'
import { fmtBytes, progress, readSparse, run, running, since, sleep, SparseImage, writeSparseOver } from './util'
import { runWorkload, Workload, workloads } from './workloads'

const HDD_PROFILE = 'laptop5400'
const TIMEOUT_MS = 60 * 60_000

type Key = 'a' | 'b' | 'c' | 'e' | 'f'
type Part = 'boot' | 'interference' | 'bigstore'

interface Cfg {
  key: Key
  id: string
  label: string
  emulated: boolean
  /** It keeps state on the SSD across a restart: the run lives a day first. */
  keeps: boolean
  introspect: boolean
  args: (ssdMax: number) => string[]
}

interface Args {
  quick: boolean
  ns: number[]
  configs: Key[]
  parts: Part[]
  ramCache: number
  ssdMax: number
  bigSsdMax: number
  vmMemory: number
  interferenceVms: number
  streamVms: number
  bigVms: number
  out: string
  json: string | null
  keep: boolean
  /** The benchmark images' scale (images.ts). */
  scale: number
}

function usage(msg?: string): never {
  if (msg) process.stderr.write(`bench --fleet: ${msg}\n`)
  process.stderr.write(
    [
      'usage: node dist/scripts/bench.js --fleet [--quick] [--ns 1,4,16] [--configs a,b,c,e,f] [--parts boot,interference,bigstore]',
      '         [--ram-cache SIZE] [--vm-memory SIZE|off] [--scale F] [--out DIR] [--json FILE] [--keep]',
      'Many VMs on one datastore (issue 18): (i) boot storm of N VMs, (ii) meta-data VMs beside streaming VMs,',
      '(iii) a datastore of >= 10x the SSD cap, (iv) each image\'s attach-to-scan latency. --quick: N = 1, 4 and fewer VMs.',
      '',
    ].join('\n'),
  )
  process.exit(msg ? 2 : 0)
}

function size(v: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)([kmg]?)i?b?$/i.exec(v.trim())
  if (!m) usage(`${what} ${v}: not a size (e.g. 256M)`)
  return Math.floor(Number(m[1]) * { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'])
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    quick: argv.includes('--quick'),
    ns: [],
    configs: ['a', 'b', 'c', 'e', 'f'],
    parts: ['boot', 'interference', 'bigstore'],
    ramCache: 256 << 20,
    ssdMax: 0,
    bigSsdMax: 1 << 30,
    vmMemory: 1 << 30,
    interferenceVms: 0,
    streamVms: 2,
    bigVms: 0,
    out: path.join(PROJECT_ROOT, '.cache', 'bench', 'results'),
    json: null,
    keep: false,
    scale: 0.1,
  }
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]
    const val = () => argv[++i] ?? usage(`${k} needs a value`)
    if (k === '--quick') continue
    else if (k === '--ns') a.ns = val().split(',').map(Number)
    else if (k === '--configs') a.configs = val().split(',') as Key[]
    else if (k === '--parts') a.parts = val().split(',') as Part[]
    else if (k === '--ram-cache') a.ramCache = size(val(), k)
    else if (k === '--vm-memory') {
      const v = val()
      a.vmMemory = v === 'off' || v === '0' ? 0 : size(v, k)
    } else if (k === '--out') a.out = path.resolve(val())
    else if (k === '--json') a.json = path.resolve(val())
    else if (k === '--keep') a.keep = true
    else if (k === '--scale') a.scale = Number(val())
    else if (k === '-h' || k === '--help') usage()
    else usage(`unknown argument ${k}`)
  }
  if (!a.ns.length) a.ns = a.quick ? [1, 4] : [1, 4, 16]
  if (!(a.scale > 0 && a.scale < 0.5)) usage('--scale: above 0 and below 0.5 (the small OS image)')
  if (a.ns.some((n) => !(n >= 1 && n <= 32))) usage('--ns: 1 to 32 VMs')
  for (const c of a.configs) if (!'abcef'.includes(c) || c.length !== 1) usage(`--configs: ${c} is not one of a, b, c, e, f`)
  for (const p of a.parts) if (!['boot', 'interference', 'bigstore'].includes(p)) usage(`--parts: ${p} is not boot, interference or bigstore`)
  a.interferenceVms = a.quick ? 4 : 8
  a.streamVms = a.quick ? 1 : 2
  a.bigVms = a.quick ? 2 : 4
  // The SSD cap of the boot storm: room for every VM's meta-data, boot files and learnt set.
  a.ssdMax = Math.max(1 << 30, Math.max(...a.ns) * (128 << 20))
  return a
}

function configs(A: Args): Cfg[] {
  const ram = (c: Args) => ['--ram-cache', String(c.ramCache)]
  return [
    { key: 'a', id: 'passthrough', label: '`--no-introspect`: pure pass-through', emulated: true, keeps: false, introspect: false, args: () => ['--no-introspect'] },
    { key: 'b', id: 'conventional', label: '`--cache-mode conventional`: RAM as a plain LRU of all blocks with read-ahead; no SSD', emulated: true, keeps: false, introspect: false, args: () => ['--cache-mode', 'conventional', ...ram(A)] },
    { key: 'c', id: 'introspect', label: 'the product: introspection, meta-data, small and boot files on RAM and the SSD store, the VM-start signal and learnt boot sets', emulated: true, keeps: true, introspect: true, args: (s) => [...ram(A), '--ssd-max', String(s)] },
    { key: 'e', id: 'ram', label: '(c) on the host disk and page cache (no --emulate-hdd): the upper bound', emulated: false, keeps: true, introspect: true, args: (s) => [...ram(A), '--ssd-max', String(s)] },
    { key: 'f', id: 'block-cache', label: '`--cache-mode block-cache`: the conventional array with an SSD block cache of the same cap (bcache-like: LRU, 4 MiB sequential cutoff, write-back, no classes, no preload)', emulated: true, keeps: true, introspect: false, args: (s) => ['--cache-mode', 'block-cache', ...ram(A), '--ssd-max', String(s)] },
  ]
}

// --- the rig ---------------------------------------------------------------------

const cleanup = new Cleanup()
let aborting = false

interface Ctx {
  args: Args
  set: ImageSet
  self: string
  work: string
  store: string
  mnt: string
  guest: string
  logFile: string
  /** Working copies made so far (store-relative flat file name → its source). */
  copies: Map<string, { image: BuiltImage; dirty: boolean; pristine?: SparseImage }>
}

/** A VM's disk in the store: a copy of a cached image (flat file + descriptor). */
interface Disk {
  name: string
  flat: string
  image: BuiltImage
}

async function disk(ctx: Ctx, image: BuiltImage, name: string): Promise<Disk> {
  const flat = `${name}-flat.vmdk`
  const have = ctx.copies.get(flat)
  const dst = path.join(ctx.store, flat)
  if (!have) {
    await run('cp', ['--sparse=always', '--reflink=auto', path.join(ctx.set.dir, image.flat), dst])
    fs.writeFileSync(path.join(ctx.store, `${name}.vmdk`), fs.readFileSync(path.join(ctx.set.dir, image.vmdk), 'utf8').split(`"${image.flat}"`).join(`"${flat}"`))
    ctx.copies.set(flat, { image, dirty: false })
  } else if (have.dirty) {
    writeSparseOver((have.pristine ??= readSparse(path.join(ctx.set.dir, image.flat))), dst)
    have.dirty = false
  }
  return { name, flat, image }
}

/**
 * A VM's big disk that it streams or reads at random: a sparse raw file with
 * an empty ext4 on it (a disk the mount attaches as an image, as it would a
 * VM's; a file of no known format is served as plain pass-through, and no
 * cache of any configuration would see it).
 */
async function streamDisk(ctx: Ctx, name: string, bytes: number): Promise<string> {
  const f = path.join(ctx.store, `${name}.img`)
  if (!fs.existsSync(f) || fs.statSync(f).size !== bytes) {
    fs.rmSync(f, { force: true })
    fs.writeFileSync(f, '')
    fs.truncateSync(f, bytes)
    await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'lazy_itable_init=1,nodiscard', f])
  }
  return `${name}.img`
}

interface RunningVm {
  disk: Disk
  root: string
  memory: VmMemory | null
  /** When its first open was asked (ms since the epoch). */
  attachedMs: number
  stop: () => Promise<void>
}

/** Starts a VM: its disk opened (loop devices), the hypervisor's lock directory, its guest file systems mounted. */
async function startVm(ctx: Ctx, d: Disk, rw: boolean, opts: { lock: boolean; mountGuests?: boolean } = { lock: true }): Promise<RunningVm> {
  const attachedMs = Date.now()
  const parts = [...d.image.parts].sort((x, y) => x.mountAt.length - y.mountAt.length)
  const loops: Awaited<ReturnType<typeof attachLoop>>[] = []
  for (const p of parts) loops.push(await attachLoop(cleanup, path.join(ctx.mnt, d.flat), p.offset, p.size, !rw))
  const lock = path.join(ctx.mnt, `${d.flat}.lck`)
  if (opts.lock) fs.mkdirSync(lock, { recursive: true })
  const root = path.join(ctx.guest, d.name)
  const guests: (() => Promise<void>)[] = []
  if (opts.mountGuests !== false) for (const [i, p] of parts.entries()) guests.push(await mountGuest(cleanup, loops[i].dev, p.fstype, path.join(root, p.mountAt), !rw))
  const memory = ctx.args.vmMemory ? vmMemory(`fleet-${d.name}`, ctx.args.vmMemory) : null
  const dropMemory = memory ? cleanup.add(`memory group ${memory.dir}`, async () => memory.remove()) : async () => undefined
  return {
    disk: d,
    root,
    memory,
    attachedMs,
    stop: async () => {
      for (const g of guests.reverse()) await g()
      for (const l of loops.reverse()) await l.detach()
      fs.rmSync(lock, { recursive: true, force: true })
      await dropMemory()
    },
  }
}

function workload(base: Workload['base']): Workload {
  const w = workloads(['ext3']).find((x) => x.base === base) ?? workloads(['ext4']).find((x) => x.base === base)
  if (!w) throw new Error(`no workload ${base}`)
  return w
}

/** Runs one workload of the Figure 2 set in a VM; seconds. */
async function timed(ctx: Ctx, vm: RunningVm, base: Workload['base'], tmp: string): Promise<number> {
  fs.mkdirSync(tmp, { recursive: true })
  const t = process.hrtime.bigint()
  await runWorkload(workload(base), { root: vm.root, self: ctx.self, tmp, createFiles: 0, webIterations: 0, www: [], boot: ctx.set.boot, memory: vm.memory }, TIMEOUT_MS)
  return since(t)
}

async function mount(ctx: Ctx, c: Cfg, ssd: string, ssdMax: number, emulated: boolean, env: NodeJS.ProcessEnv = {}): Promise<FuseMount> {
  const args = [...c.args(ssdMax)]
  if (c.key !== 'a') args.push('--ssd', ssd)
  if (emulated) args.push('--emulate-hdd', HDD_PROFILE)
  return mountFuse(cleanup, ctx.store, ctx.mnt, args, { VMDI_STATE_DIR: path.join(path.dirname(ssd), 'state'), ...env }, ctx.logFile)
}

function imageIn(st: MountStats, flat: string) {
  return st.images.find((i) => path.basename(i.path) === flat) ?? null
}

/** Waits until every image's scan has ended and its preload too ((c)/(e)); returns each one's scan start (ms since the epoch). */
async function waitScans(fuse: FuseMount, flats: string[]): Promise<Map<string, number | null>> {
  const t0 = Date.now()
  for (;;) {
    if (aborting) throw new Error('interrupted')
    const st = await fuse.stats()
    const ims = flats.map((f) => imageIn(st, f))
    const failed = ims.find((im) => im?.scan.state === 'failed')
    if (failed) throw new Error(`the scan of ${failed.path} failed: ${failed.scan.error}`)
    if (ims.every((im) => im && im.scan.state === 'done' && im.scan.warm)) return new Map(flats.map((f, i) => [f, ims[i]!.progress.scan.startedMs ?? null]))
    if (Date.now() - t0 > 30 * 60_000) throw new Error('scans and preloads did not end within 30 minutes')
    await sleep(200)
  }
}

/** Waits until every image's boot has ended (its learnt set saved). */
async function waitBootsEnded(fuse: FuseMount, flats: string[]): Promise<void> {
  const t0 = Date.now()
  for (;;) {
    const st = await fuse.stats()
    if (flats.every((f) => !imageIn(st, f)?.booting)) return
    if (Date.now() - t0 > 5 * 60_000) throw new Error('boots did not end within 5 minutes')
    await sleep(500)
  }
}

/** The datastore's other traffic: random 64 KiB direct reads of `bytes` spread over the stream disks (fio), on the host disk. */
async function otherTraffic(ctx: Ctx, files: string[], bytes: number): Promise<number> {
  const t = process.hrtime.bigint()
  await run('fio', ['--name=day', `--filename=${files.map((f) => path.join(ctx.mnt, f).replace(/:/g, '\\:')).join(':')}`, `--size=${files.reduce((a, f) => a + fs.statSync(path.join(ctx.store, f)).size, 0)}`, '--rw=randread', '--bs=64k', '--direct=1', '--ioengine=psync', `--io_size=${bytes}`, '--randrepeat=1', '--norandommap', '--output-format=terse'], { timeoutMs: TIMEOUT_MS })
  return since(t)
}

function storeFiles(file: string): string[] {
  return [file, `${file}-wal`, `${file}-shm`]
}

function copyStore(from: string, to: string): void {
  storeFiles(to).forEach((f) => fs.rmSync(f, { force: true }))
  storeFiles(from).forEach((f, i) => fs.existsSync(f) && fs.copyFileSync(f, storeFiles(to)[i]))
}

async function stopAll(vms: RunningVm[]): Promise<void> {
  for (const v of vms) await v.stop()
}

function runDir(ctx: Ctx, name: string): string {
  const d = path.join(ctx.work, 'runs', name)
  fs.rmSync(d, { recursive: true, force: true })
  fs.mkdirSync(d, { recursive: true })
  return d
}

// --- (i) boot storm and (iv) attach-to-scan ---------------------------------------------

interface BootCell {
  seconds: number | null
  /** Each VM's boot (loop devices, guest mount, boot list read), seconds. */
  vms: number[]
  /** (iv): per image, its scan's start after its first open (ms), in the day's first mount. */
  attachToScanMs?: number[]
  dayBootSeconds?: number
  bootLearned?: number[]
  /** The timed mount: 4 KiB blocks the VMs' reads got from RAM / the SSD store / the HDD, and the emulated disk's requests and busy seconds. */
  blocks?: { ram: number; ssd: number; hdd: number }
  hdd?: { requests: number; busySeconds: number }
  /** Each VM's boot list read alone (without starting its loop devices and guest mounts), seconds. */
  readSeconds: number[]
  /** Each VM's start: loop devices, lock, guest mounts, seconds. */
  startSeconds?: number[]
  error?: string
}

async function bootStorm(ctx: Ctx, c: Cfg, n: number): Promise<BootCell> {
  const dir = runDir(ctx, `boot-${c.key}-${n}`)
  const ssd = path.join(dir, 'ssd.sqlite')
  const disks: Disk[] = []
  for (let i = 0; i < n; i++) disks.push(await disk(ctx, ctx.set.os, `vm${String(i + 1).padStart(2, '0')}`))
  const cell: BootCell = { seconds: null, vms: [], readSeconds: [] }
  const tag = `boot storm N=${n} (${c.key})`
  if (c.keeps) {
    // A day: attach every VM, (c)/(e) scan and preload, everyone boots once (learnt); boots end.
    progress(`${tag}: the day before: attach, ${c.introspect ? 'scans and preloads, ' : ''}one boot each`)
    const day = await mount(ctx, c, ssd, ctx.args.ssdMax, c.emulated, { VMDI_BOOT_QUIET_MS: '10000' })
    const vms = await Promise.all(disks.map((d) => startVm(ctx, d, false, { lock: false, mountGuests: false })))
    if (c.introspect) {
      const started = await waitScans(day, disks.map((d) => d.flat))
      cell.attachToScanMs = vms.map((v) => (started.get(v.disk.flat) ?? NaN) - v.attachedMs)
    }
    await stopAll(vms)
    const t = process.hrtime.bigint()
    const booted = await Promise.all(disks.map(async (d) => {
      const vm = await startVm(ctx, d, false)
      await timed(ctx, vm, 'boot', path.join(dir, d.name))
      return vm
    }))
    cell.dayBootSeconds = since(t)
    await stopAll(booted)
    if (c.introspect) {
      await waitBootsEnded(day, disks.map((d) => d.flat))
      // The learnt sets get their SSD copies in the background (read back from the disk): until that settles.
      let kept = -1
      for (let i = 0; i < 600; i++) {
        const st = await day.stats()
        const now = disks.reduce((a, d) => a + Number((imageIn(st, d.flat) as unknown as Record<string, unknown> | null)?.bootKept ?? 0), 0)
        if (now === kept) break
        kept = now
        await sleep(3000)
      }
      const st = await day.stats()
      cell.bootLearned = disks.map((d) => Number(imageIn(st, d.flat)?.bootLearned ?? 0))
      for (const d of disks) {
        const im = imageIn(st, d.flat) as unknown as Record<string, unknown> | null
        if (im) progress(`${tag}: day: ${d.name}: ${['ramRefilled', 'bootPrefetched', 'bootKept', 'ssdBlocks', 'preloaded', 'bootLearned'].map((k) => `${k} ${im[k]}`).join(', ')}`)
      }
    }
    await day.umount()
    const files = [await streamDisk(ctx, 'other1', 4 * 2 ** 30), await streamDisk(ctx, 'other2', 4 * 2 ** 30)]
    progress(`${tag}: the datastore's other traffic: ${fmtBytes(2 * ctx.args.ssdMax)} of random reads (host disk, not timed)`)
    const night = await mount(ctx, c, ssd, ctx.args.ssdMax, false)
    await otherTraffic(ctx, files, 2 * ctx.args.ssdMax)
    await night.umount()
  }
  await dropCaches()
  const fuse = await mount(ctx, c, ssd, ctx.args.ssdMax, c.emulated)
  progress(`${tag}: ${n} VM(s) start at once`)
  const t0 = process.hrtime.bigint()
  const vms = await Promise.all(
    disks.map(async (d) => {
      const ts = process.hrtime.bigint()
      const vm = await startVm(ctx, d, false)
      ;(cell.startSeconds ??= []).push(since(ts))
      cell.readSeconds.push(await timed(ctx, vm, 'boot', path.join(dir, d.name)))
      cell.vms.push(since(t0))
      return vm
    }),
  )
  cell.seconds = since(t0)
  const st = await fuse.stats()
  if ('images' in st && Array.isArray(st.images)) {
    const b = { ram: 0, ssd: 0, hdd: 0 }
    for (const im of st.images) for (const v of Object.values((im as { classes?: Record<string, { ramHits?: number; ssdHits?: number; hddReads?: number }> }).classes ?? {})) {
      b.ram += v.ramHits ?? 0
      b.ssd += v.ssdHits ?? 0
      b.hdd += v.hddReads ?? 0
    }
    cell.blocks = b
  }
  if (st.hdd) cell.hdd = { requests: st.hdd.requests, busySeconds: st.hdd.busyMs / 1000 }
  for (const d of disks) {
    const im = imageIn(st, d.flat) as unknown as Record<string, unknown> | null
    const hdd = Object.entries((im?.classes ?? {}) as Record<string, { hddReads?: number }>).filter(([, v]) => v.hddReads).map(([k, v]) => `${k} ${v.hddReads}`).join(' ')
    if (im) progress(`${tag}: ${d.name}: ${['ramRefilled', 'bootPrefetched', 'bootKept', 'ssdBlocks', 'preloaded', 'booting', 'bootsEnded'].map((k) => `${k} ${im[k]}`).join(', ')}; HDD reads by class: ${hdd || 'none'}`)
  }
  await stopAll(vms)
  await fuse.umount()
  progress(`${tag}: the last booted after ${cell.seconds.toFixed(2)} s${cell.attachToScanMs ? `; scans started ${Math.max(...cell.attachToScanMs).toFixed(0)} ms after attach at most` : ''}`)
  if (!ctx.args.keep) fs.rmSync(dir, { recursive: true, force: true })
  return cell
}

// --- (ii) interference ---------------------------------------------------------------------

interface InterferenceCell {
  /** Per meta-data VM: du + find + stat seconds without and with the streams. */
  alone: number[]
  streams: number[]
  /** MiB/s the streams read meanwhile. */
  streamMiBs: number | null
  error?: string
}

const META_WORK: Workload['base'][] = ['du', 'find', 'stat']

/** Runs the meta-data work on every VM at once; each VM's seconds. */
async function metaWork(ctx: Ctx, vms: RunningVm[], dir: string): Promise<number[]> {
  await dropCaches()
  return Promise.all(
    vms.map(async (vm) => {
      let s = 0
      for (const w of META_WORK) s += await timed(ctx, vm, w, path.join(dir, vm.disk.name))
      return s
    }),
  )
}

/** Streams `file` with 1 MiB direct reads, looping, until `stop()`; bytes read. */
function stream(ctx: Ctx, file: string): { stop: () => Promise<number> } {
  let stopping = false
  let bytes = 0
  const loop = (async () => {
    const fd = fs.openSync(path.join(ctx.mnt, file), fs.constants.O_RDONLY | fs.constants.O_DIRECT)
    const buf = Buffer.from(new ArrayBuffer(1 << 20))
    const total = fs.fstatSync(fd).size
    try {
      for (let at = 0; !stopping && !aborting; at = (at + buf.length) % total) {
        await new Promise<void>((res, rej) => fs.read(fd, buf, 0, buf.length, at, (e, n) => (e ? rej(e) : ((bytes += n), res()))))
      }
    } finally {
      fs.closeSync(fd)
    }
  })()
  return {
    stop: async () => {
      stopping = true
      await loop
      return bytes
    },
  }
}

async function interference(ctx: Ctx, c: Cfg): Promise<InterferenceCell> {
  const dir = runDir(ctx, `interference-${c.key}`)
  const k = ctx.args.interferenceVms
  const disks: Disk[] = []
  for (let i = 0; i < k; i++) disks.push(await disk(ctx, ctx.set.data.ext3, `meta${String(i + 1).padStart(2, '0')}`))
  const streams: string[] = []
  for (let i = 0; i < ctx.args.streamVms; i++) streams.push(await streamDisk(ctx, `stream${i + 1}`, 4 * 2 ** 30))
  const snap = path.join(dir, 'day.sqlite')
  const tag = `interference (${c.key})`
  if (c.keeps) {
    progress(`${tag}: the day before: attach, ${c.introspect ? 'scans and preloads' : 'one du/find/stat pass'}`)
    const day = await mount(ctx, c, snap, ctx.args.ssdMax, c.emulated)
    const vms = await Promise.all(disks.map((d) => startVm(ctx, d, false)))
    if (c.introspect) await waitScans(day, disks.map((d) => d.flat))
    else await metaWork(ctx, vms, dir)
    await stopAll(vms)
    await day.umount()
  }
  const cell: InterferenceCell = { alone: [], streams: [], streamMiBs: null }
  for (const phase of ['alone', 'streams'] as const) {
    const ssd = path.join(dir, `${phase}.sqlite`)
    if (c.keeps) copyStore(snap, ssd)
    const fuse = await mount(ctx, c, ssd, ctx.args.ssdMax, c.emulated)
    const vms = await Promise.all(disks.map((d) => startVm(ctx, d, false)))
    if (c.introspect) await waitScans(fuse, disks.map((d) => d.flat))
    const s = phase === 'streams' ? streams.map((f) => stream(ctx, f)) : []
    if (s.length) await sleep(2000)
    const t = process.hrtime.bigint()
    cell[phase] = await metaWork(ctx, vms, dir)
    if (s.length) {
      const secs = since(t)
      const bytes = (await Promise.all(s.map((x) => x.stop()))).reduce((a, b) => a + b, 0)
      cell.streamMiBs = bytes / (1 << 20) / (secs + 2)
    }
    await stopAll(vms)
    await fuse.umount()
    progress(`${tag}: ${phase}: du+find+stat per VM ${cell[phase].map((x) => x.toFixed(1)).join(' ')} s`)
  }
  if (!ctx.args.keep) fs.rmSync(dir, { recursive: true, force: true })
  return cell
}

// --- (iii) a datastore of >= 10x the SSD cap ----------------------------------------------------

interface BigCell {
  /** Seconds until every VM had done it. */
  du: number | null
  find: number | null
  rm: number | null
  dataBytes: number
  error?: string
}

async function bigstore(ctx: Ctx, c: Cfg): Promise<BigCell> {
  const dir = runDir(ctx, `bigstore-${c.key}`)
  const m = ctx.args.bigVms
  const cap = ctx.args.bigSsdMax
  const disks: Disk[] = []
  for (let i = 0; i < m; i++) disks.push(await disk(ctx, ctx.set.data.ext3, `big${String(i + 1).padStart(2, '0')}`))
  const streams: string[] = []
  for (let i = 0; i < 2; i++) streams.push(await streamDisk(ctx, `stream${i + 1}`, 4 * 2 ** 30))
  const dataBytes = disks.reduce((a, d) => a + d.image.bytes, 0) + streams.length * (4 * 2 ** 30)
  const ssd = path.join(dir, 'ssd.sqlite')
  const tag = `datastore >> SSD (${c.key})`
  if (c.keeps) {
    progress(`${tag}: the day before: attach, ${c.introspect ? 'scans and preloads' : 'one du/find pass'}, then ${fmtBytes(2 * cap)} of random data reads`)
    const day = await mount(ctx, c, ssd, cap, c.emulated)
    const vms = await Promise.all(disks.map((d) => startVm(ctx, d, false)))
    if (c.introspect) await waitScans(day, disks.map((d) => d.flat))
    else await metaWork(ctx, vms, dir)
    await stopAll(vms)
    await day.umount()
    const night = await mount(ctx, c, ssd, cap, false)
    await otherTraffic(ctx, streams, 2 * cap)
    await night.umount()
  }
  await dropCaches()
  const fuse = await mount(ctx, c, ssd, cap, c.emulated)
  for (const d of disks) ctx.copies.get(d.flat)!.dirty = true
  const vms = await Promise.all(disks.map((d) => startVm(ctx, d, true)))
  const cell: BigCell = { du: null, find: null, rm: null, dataBytes }
  for (const w of ['du', 'find', 'rm'] as const) {
    await dropCaches()
    const t = process.hrtime.bigint()
    await Promise.all(vms.map((vm) => timed(ctx, vm, w, path.join(dir, vm.disk.name))))
    cell[w] = since(t)
  }
  await stopAll(vms)
  await fuse.umount()
  progress(`${tag}: du ${cell.du!.toFixed(2)} s, find ${cell.find!.toFixed(2)} s, rm ${cell.rm!.toFixed(2)} s`)
  if (!ctx.args.keep) fs.rmSync(dir, { recursive: true, force: true })
  return cell
}

// --- the report ------------------------------------------------------------------------------

interface Results {
  boot: Record<string, Partial<Record<Key, BootCell>>>
  interference: Partial<Record<Key, InterferenceCell>>
  bigstore: Partial<Record<Key, BigCell>>
}

const fmt = (x: number | null | undefined, d = 2) => (x === null || x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(d))
const ratio = (x: number | null | undefined, y: number | null | undefined) => (x && y ? y / x : null)
const median = (a: number[]) => {
  const s = [...a].sort((x, y) => x - y)
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN
}

/** The SSD cap of (iii), from the report's budgets line. */
function BIG_CAP_OF(meta: Record<string, string>): number {
  return Number(meta.bigSsdMaxBytes) || NaN
}

function verdict(ok: boolean | null): string {
  return ok === null ? 'not measured' : ok ? 'met' : 'MISSED'
}

function report(r: Results, cfgs: Cfg[], meta: Record<string, string>): string {
  const L: string[] = []
  L.push('# Many VMs on one datastore (npm run bench -- --fleet)', '')
  for (const [k, v] of Object.entries(meta)) L.push(`- ${k}: ${v}`)
  L.push('', 'Configurations:', '')
  for (const c of cfgs) L.push(`- (${c.key}) ${c.id}: ${c.label}${c.emulated ? '' : ''}`)
  const targets: string[] = []
  const ns = Object.keys(r.boot).map(Number).sort((a, b) => a - b)
  if (ns.length) {
    L.push('', '## (i) Boot storm: seconds until the last of N VMs has booted', '')
    L.push(`| N | ${cfgs.map((c) => `(${c.key})`).join(' | ')} | (c) vs (b) | (c) vs (f) | (c)/(e) |`)
    L.push(`|---|${cfgs.map(() => '---:').join('|')}|---:|---:|---:|`)
    for (const n of ns) {
      const row = r.boot[n]
      const c = row.c?.seconds
      L.push(`| ${n} | ${cfgs.map((x) => (row[x.key]?.error ? 'failed' : fmt(row[x.key]?.seconds))).join(' | ')} | ${fmt(ratio(c, row.b?.seconds))}× | ${fmt(ratio(c, row.f?.seconds))}× | ${fmt(c && row.e?.seconds ? c / row.e.seconds : null)}× |`)
    }
    L.push('', 'Per run: each VM\'s start (loop devices, lock directory, guest mounts) and its boot list read (medians, s), the guests\' reads in 4 KiB blocks from RAM / SSD store / HDD, and the emulated disk\'s requests and busy seconds:', '')
    L.push('| N | config | start median | read median | blocks RAM / SSD / HDD | HDD requests | HDD busy, s |', '|---|---|---:|---:|---|---:|---:|')
    for (const n of ns) for (const c of cfgs) {
      const x = r.boot[n][c.key]
      if (!x || x.error) continue
      L.push(`| ${n} | (${c.key}) | ${fmt(median(x.startSeconds ?? []))} | ${fmt(median(x.readSeconds))} | ${x.blocks ? `${x.blocks.ram} / ${x.blocks.ssd} / ${x.blocks.hdd}` : 'n/a'} | ${x.hdd?.requests ?? 'n/a'} | ${fmt(x.hdd?.busySeconds, 1)} |`)
    }
    const one = r.boot[1]
    if (one) targets.push(`one VM's boot (second start, learnt set): (c) within 2× of (e): ${fmt(one.c?.seconds && one.e?.seconds ? one.c.seconds / one.e.seconds : null)}× — ${verdict(one.c?.seconds && one.e?.seconds ? one.c.seconds <= 2 * one.e.seconds : null)}`)
    const big = r.boot[16]
    if (big) {
      const c = big.c?.seconds
      targets.push(`boot storm N = 16: (c) ≥ 3× faster than (b): ${fmt(ratio(c, big.b?.seconds))}× — ${verdict(c && big.b?.seconds ? big.b.seconds >= 3 * c : null)}`)
      targets.push(`boot storm N = 16: (c) ≥ 1.5× faster than (f): ${fmt(ratio(c, big.f?.seconds))}× — ${verdict(c && big.f?.seconds ? big.f.seconds >= 1.5 * c : null)}`)
      targets.push(`boot storm N = 16: (c) within 2× of (e): ${fmt(c && big.e?.seconds ? c / big.e.seconds : null)}× — ${verdict(c && big.e?.seconds ? c <= 2 * big.e.seconds : null)}`)
    }
    const lat = ns.map((n) => r.boot[n].c?.attachToScanMs ?? []).flat().filter(Number.isFinite)
    const maxN = Math.max(...ns)
    const last = r.boot[maxN].c?.attachToScanMs
    L.push('', '## (iv) Attach to scan start, (c), the day\'s first mount (every VM opens its disk at once)', '')
    L.push(`| N | scan start after the attach, ms: median | max |`, '|---|---:|---:|')
    for (const n of ns) {
      const a = r.boot[n].c?.attachToScanMs
      if (a) L.push(`| ${n} | ${fmt(median(a), 0)} | ${fmt(Math.max(...a), 0)} |`)
    }
    if (last) targets.push(`the last image's scan starts ≤ 1 s after its attach (N = ${maxN}): ${fmt(Math.max(...last), 0)} ms — ${verdict(Math.max(...last) <= 1000)}`)
    else if (lat.length) targets.push(`attach to scan: at most ${fmt(Math.max(...lat), 0)} ms`)
    const learnt = ns.map((n) => `N = ${n}: ${(r.boot[n].c?.bootLearned ?? []).map((b) => fmtBytes(b * 4096)).join(', ')}`)
    L.push('', `Learnt boot sets ((c), per VM): ${learnt.join('; ')}.`)
    L.push(`The day's boots (the first start, cold, N at once), seconds: ${ns.map((n) => `N = ${n}: ${cfgs.filter((c) => c.keeps).map((c) => `(${c.key}) ${fmt(r.boot[n][c.key]?.dayBootSeconds)}`).join(', ')}`).join('; ')}.`)
  }
  if (Object.keys(r.interference).length) {
    L.push('', '## (ii) Interference: each meta-data VM\'s du + find + stat, seconds, without and with the streaming VMs', '')
    L.push('| config | without streams: median / max | with streams: median / max | worst VM\'s ratio | streams read, MiB/s |', '|---|---:|---:|---:|---:|')
    for (const c of cfgs) {
      const x = r.interference[c.key]
      if (!x) continue
      if (x.error) {
        L.push(`| (${c.key}) | failed: ${x.error.slice(0, 80)} | | | |`)
        continue
      }
      const worst = Math.max(...x.streams.map((s, i) => s / x.alone[i]))
      L.push(`| (${c.key}) | ${fmt(median(x.alone))} / ${fmt(Math.max(...x.alone))} | ${fmt(median(x.streams))} / ${fmt(Math.max(...x.streams))} | ${fmt(worst)}× | ${fmt(x.streamMiBs, 0)} |`)
      if (c.key === 'c') targets.push(`interference: each meta-data VM under (c) within 1.25× of its runtime without the streams: worst ${fmt(worst)}× — ${verdict(worst <= 1.25)}`)
    }
  }
  if (Object.keys(r.bigstore).length) {
    const data = Object.values(r.bigstore).find((x) => x && x.dataBytes)?.dataBytes ?? 0
    L.push('', '## (iii) A datastore of ≥ 10× the SSD cap: seconds until every VM had done it', '')
    L.push(`The datastore: ${fmtBytes(data)} of disks (the VMs' data images and two stream disks), ${fmt(data / BIG_CAP_OF(meta), 1)}× the SSD cap; caches dropped before each step.`, '')
    L.push('| config | du | find | rm -rf | total |', '|---|---:|---:|---:|---:|')
    const tot = (x?: BigCell) => (x && x.du !== null && x.find !== null && x.rm !== null ? x.du + x.find + x.rm : null)
    for (const c of cfgs) {
      const x = r.bigstore[c.key]
      if (!x) continue
      L.push(x.error ? `| (${c.key}) | failed: ${x.error.slice(0, 80)} | | | |` : `| (${c.key}) | ${fmt(x.du)} | ${fmt(x.find)} | ${fmt(x.rm)} | ${fmt(tot(x))} |`)
    }
    const c = r.bigstore.c
    const f = r.bigstore.f
    if (c && f) {
      const each = (['du', 'find', 'rm'] as const).map((w) => ratio(c[w], f[w]))
      targets.push(`datastore ≫ SSD: (c) ≥ 2× faster than (f) on du/find/rm: ${each.map((x) => `${fmt(x)}×`).join(' / ')} — ${verdict(each.every((x) => x !== null) ? each.every((x) => x! >= 2) : null)}`)
    }
  }
  L.push('', '## Targets (issue 18)', '', ...targets.map((t) => `- ${t}`), '')
  return L.join('\n')
}

// --- main ----------------------------------------------------------------------------------

async function clearStale(work: string): Promise<void> {
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m && m.startsWith(work + '/')).sort((a, b) => b.length - a.length)
  for (const m of mounts.filter((m) => !m.endsWith('/mnt'))) await run('umount', ['-l', m], { allowFail: true })
  const lj = await run('losetup', ['-J', '-l'], { allowFail: true })
  const loops: { name: string; 'back-file': string | null }[] = lj.stdout.trim() ? (JSON.parse(lj.stdout).loopdevices ?? []) : []
  for (const l of loops) if (l['back-file']?.startsWith(work + '/')) await run('losetup', ['-d', l.name], { allowFail: true })
  const mnt = path.join(work, 'mnt')
  if (isMounted(mnt)) {
    await run(process.execPath, [CLI, 'umount', mnt], { allowFail: true, timeoutMs: 120_000 })
    if (isMounted(mnt)) await run('fusermount', ['-u', '-z', mnt], { allowFail: true })
  }
}

export async function fleet(argv: string[], self: string): Promise<void> {
  const args = parseArgs(argv)
  const t0 = Date.now()
  // The commit the run's build is of: read now (a commit made while it runs is not what it measured).
  const commit = spawnSync('git', ['-C', PROJECT_ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim()
  if (process.getuid?.() !== 0) usage('run as root (FUSE mounts, loop devices, guest mounts, cgroups)')
  if (!fs.existsSync(CLI)) usage(`${CLI} is missing: build first (npx tsc -p .)`)
  if (args.vmMemory && !memoryCgroupsAvailable()) usage('no cgroup v1 memory controller at /sys/fs/cgroup/memory: give --vm-memory off')
  const help = spawnSync(process.execPath, [CLI, '--help'], { encoding: 'utf8' }).stdout
  const all = configs(args)
  const notes: string[] = []
  let cfgs = all.filter((c) => args.configs.includes(c.key))
  if (!help.includes('block-cache') && cfgs.some((c) => c.key === 'f')) {
    cfgs = cfgs.filter((c) => c.key !== 'f')
    notes.push('This build of the CLI has no `--cache-mode block-cache`: configuration (f) was not run.')
  }
  const onSignal = (sig: string) => {
    if (aborting) return
    aborting = true
    progress(`${sig}: stopping; unmounting guests, detaching loop devices, unmounting vmdi-fuse`)
    for (const c of running) c.kill('SIGKILL')
    void cleanup.unwind().finally(() => process.exit(130))
  }
  process.on('SIGINT', () => onSignal('SIGINT'))
  process.on('SIGTERM', () => onSignal('SIGTERM'))

  const set = await ensureImages(args.scale)
  const work = path.join(PROJECT_ROOT, '.cache', 'bench', 'fleet')
  await clearStale(work)
  fs.rmSync(path.join(work, 'runs'), { recursive: true, force: true })
  // The store's copies are kept between runs (copying 16 OS images takes a while); made afresh if the image set changed.
  const stamp = path.join(work, 'store', '.images')
  if (!fs.existsSync(stamp) || fs.readFileSync(stamp, 'utf8') !== set.key) fs.rmSync(path.join(work, 'store'), { recursive: true, force: true })
  fs.mkdirSync(path.join(work, 'store'), { recursive: true })
  fs.writeFileSync(stamp, set.key)
  const ctx: Ctx = { args, set, self, work, store: path.join(work, 'store'), mnt: path.join(work, 'mnt'), guest: path.join(work, 'guest'), logFile: path.join(work, 'vmdi-fuse.log'), copies: new Map() }
  // Copies left by an earlier run: known pristine only if unchanged since they were made; rewritten otherwise.
  for (const f of fs.readdirSync(ctx.store)) {
    if (!f.endsWith('-flat.vmdk')) continue
    const image = f.startsWith('vm') ? set.os : set.data.ext3
    ctx.copies.set(f, { image, dirty: true })
  }
  fs.mkdirSync(ctx.mnt, { recursive: true })
  progress(`fleet: configurations ${cfgs.map((c) => `(${c.key})`).join(' ')}; parts ${args.parts.join(', ')}; boot storms N = ${args.ns.join(', ')}; RAM ${fmtBytes(args.ramCache)}, SSD cap ${fmtBytes(args.ssdMax)} (datastore >> SSD: ${fmtBytes(args.bigSsdMax)}); VM memory ${args.vmMemory ? fmtBytes(args.vmMemory) : 'unbounded'}; log ${ctx.logFile}`)
  const r: Results = { boot: {}, interference: {}, bigstore: {} }
  const guard = async <T extends { error?: string }>(what: string, fn: () => Promise<T>, empty: T): Promise<T> => {
    try {
      return await fn()
    } catch (e) {
      if (aborting) throw e
      progress(`${what}: FAILED: ${(e as Error).message}`)
      await cleanup.unwind()
      return { ...empty, error: (e as Error).message.split('\n')[0].slice(0, 300) }
    }
  }
  if (args.parts.includes('boot')) {
    for (const n of args.ns) {
      r.boot[n] = {}
      for (const c of cfgs) r.boot[n][c.key] = await guard(`boot storm N=${n} (${c.key})`, () => bootStorm(ctx, c, n), { seconds: null, vms: [], readSeconds: [] })
    }
  }
  if (args.parts.includes('interference')) for (const c of cfgs) r.interference[c.key] = await guard(`interference (${c.key})`, () => interference(ctx, c), { alone: [], streams: [], streamMiBs: null })
  if (args.parts.includes('bigstore')) for (const c of cfgs) r.bigstore[c.key] = await guard(`datastore >> SSD (${c.key})`, () => bigstore(ctx, c), { du: null, find: null, rm: null, dataBytes: 0 })
  const meta: Record<string, string> = {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    commit,
    command: `node dist/scripts/bench.js --fleet ${argv.join(' ')}`.trim(),
    machine: `${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, ${fmtBytes(os.totalmem())} RAM, Linux ${os.release()}`,
    disk: `one emulated 5400 RPM laptop disk (--emulate-hdd ${HDD_PROFILE}) for every VM of a mount; (e) the host disk`,
    images: `copies of the scale-${args.scale} benchmark images: OS ${fmtBytes(set.os.bytes)} (boot list ${set.boot.length} files, ${fmtBytes(set.bootBytes)}), data-ext3 ${fmtBytes(set.data.ext3.bytes)} (${set.fileserverFiles} files; data blocks are holes)`,
    budgets: `RAM ${fmtBytes(args.ramCache)} for the mount; SSD cap ${fmtBytes(args.ssdMax)} ((iii): ${fmtBytes(args.bigSsdMax)}); each VM ${args.vmMemory ? `a ${fmtBytes(args.vmMemory)} memory cgroup` : 'unbounded memory'}`,
    seconds: ((Date.now() - t0) / 1000).toFixed(0),
    bigSsdMaxBytes: String(args.bigSsdMax),
    ...(notes.length ? { notes: notes.join(' ') } : {}),
  }
  const md = report(r, cfgs, meta)
  fs.mkdirSync(args.out, { recursive: true })
  fs.writeFileSync(path.join(args.out, 'fleet.md'), md)
  const doc = JSON.stringify({ meta, results: r }, null, 2) + '\n'
  fs.writeFileSync(path.join(args.out, 'fleet.json'), doc)
  if (args.json) fs.writeFileSync(args.json, doc)
  process.stdout.write(md)
  progress(`done in ${meta.seconds} s: ${path.join(args.out, 'fleet.md')}, fleet.json`)
}
