// The benchmark's disk images, built once and cached under
// .cache/bench/images/<key>/ (key: the scale and BUILD_VERSION):
//
// - data-ext4 / data-ext3: flat VMDKs (a text descriptor + a raw "-flat.vmdk"
//   extent, as qemu-img makes with subformat=monolithicFlat) holding an MBR
//   with one partition at 1 MiB and in it an ext4 / ext3 file system with
//     fileserver/  a filebench-fileserver-like tree: 90,000 files × scale,
//                  leaf directories of 20 files under directories of 20
//                  (meandirwidth 20), sizes Gamma(shape 1.5, mean 128 KiB):
//                  filebench's fileserver personality (filesize
//                  cvar-gamma mean:131072 gamma:1.5), ~11 GiB at scale 1 — the
//                  paper's "90,000 files (about 10GB of data in total)";
//     www/         the webserver workload's file set: 1,000 files × scale
//                  (at least 100), Gamma(1.5, mean 16 KiB), width 20 (filebench
//                  webserver personality: filesize 16k, meandirwidth 20);
//   made from a tree in a temp dir (seeded RNG: the same files every build) by
//   `mke2fs -d` on a file system of ~1.45× the data (16 GiB at scale 1, the
//   paper's VMDI size; at least 512 MiB), with inode tables and journal written
//   in full (lazy_itable_init=0: no ext4lazyinit writes in the guest later).
//   Then only the meta-data is kept: `e2image -r` copies superblocks,
//   descriptors, bitmaps, inode tables, directories, indirect / extent blocks
//   into the flat extent and the data blocks become holes (zeros). The guest
//   sees every file at its size and place, reading zeros; every request is
//   timed by the emulated disk by its position, so the timing is that of the
//   full image, while the cache stays small and the per-run copies for the
//   write workloads cost seconds. `e2fsck -fn` checks each image.
// - os: a boot-like OS disk (NOT a real bootable system): MBR, p1 = a 64 MiB
//   ext4 /boot with a kernel-like file (8 MiB) and an initrd-like file
//   (32 MiB; 12 MiB below scale 0.5), p2 = an ext4 root holding a copy of this
//   machine's /etc, /usr/lib/x86_64-linux-gnu, /usr/lib/systemd, /usr/bin and
//   /usr/sbin (capped at 1.5 GiB; 192 MiB below scale 0.5) with real
//   contents, sbin/init a copy of systemd. The boot list: the kernel, the
//   initrd, init, the boot-time programs that exist here (systemd and its
//   daemons, bash, mount, agetty, …), their shared libraries (ldd closure),
//   topped up with the largest libraries under 8 MiB to 300 libraries (60
//   below scale 0.5), and every file under etc/ (150 of them, seeded, below
//   scale 0.5); in a seeded interleaved order after kernel, initrd and init.

import fs from 'fs'
import path from 'path'
import { PROJECT_ROOT } from '../../src/root'
import { fmtBytes, gamma, progress, rng, run, shuffle } from './util'

/** Bump when the layout of the images changes: older caches are rebuilt. */
export const BUILD_VERSION = 4

export const IMAGES_ROOT = path.join(PROJECT_ROOT, '.cache', 'bench', 'images')
export const PART_OFFSET = 1 << 20
const BLOCK = 4096
const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB

export type FsType = 'ext4' | 'ext3'

export interface GuestPart {
  /** MBR partition number. */
  index: number
  offset: number
  size: number
  fstype: FsType
  /** Where the guest mounts it, relative to the guest root ('' = the root). */
  mountAt: string
}

export interface BuiltImage {
  name: string
  /** File names inside the image directory (the store). */
  vmdk: string
  flat: string
  /** Size of the flat extent. */
  bytes: number
  /** Bytes the flat extent occupies on the host (sparse). */
  allocatedBytes: number
  parts: GuestPart[]
  /** Meta-data bytes of every file system (inspect --json, all classes but data). */
  metadataBytes: number
  /** Bytes the ext scan read (inspect --json), and the map's memory. */
  scanBytesRead: number
  mapBytes: number
}

export interface ImageSet {
  dir: string
  key: string
  params: ImageParams
  data: Record<FsType, BuiltImage>
  os: BuiltImage
  fileserverFiles: number
  fileserverBytes: number
  /** Webserver file set: paths relative to the guest root. */
  www: string[]
  /** Boot list: paths relative to the guest root (boot/ is partition 1). */
  boot: string[]
  bootBytes: number
  buildSeconds: number
}

export interface ImageParams {
  scale: number
  fileserverFiles: number
  meanFileBytes: number
  gammaShape: number
  dirWidth: number
  wwwFiles: number
  wwwMeanBytes: number
  osCapBytes: number
  kernelBytes: number
  initrdBytes: number
  bootLibs: number
  bootLibBytes: number
  bootEtcFiles: number
}

export function imageParams(scale: number): ImageParams {
  const small = scale < 0.5
  return {
    scale,
    fileserverFiles: Math.max(500, Math.round(90_000 * scale)),
    meanFileBytes: 128 * KiB,
    gammaShape: 1.5,
    dirWidth: 20,
    wwwFiles: Math.max(100, Math.round(1000 * scale)),
    wwwMeanBytes: 16 * KiB,
    osCapBytes: small ? 192 * MiB : 1536 * MiB,
    kernelBytes: 8 * MiB,
    initrdBytes: small ? 12 * MiB : 32 * MiB,
    bootLibs: small ? 60 : 300,
    bootLibBytes: small ? 32 * MiB : 320 * MiB,
    bootEtcFiles: small ? 150 : Infinity,
  }
}

// --- trees ---------------------------------------------------------------------

const FILL = Buffer.alloc(MiB, 0x5a)

function writeFileOfSize(p: string, n: number): void {
  const fd = fs.openSync(p, 'w')
  try {
    for (let w = 0; w < n; w += FILL.length) fs.writeSync(fd, FILL, 0, Math.min(FILL.length, n - w))
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * A filebench-like file set under root/top: `count` files in leaf directories of
 * `width` files, themselves under directories of `width` subdirectories.
 * Returns the files' paths relative to root and their total size.
 */
function fileSet(root: string, top: string, count: number, width: number, size: () => number): { files: string[]; bytes: number } {
  const leaves = Math.ceil(count / width)
  const depth = Math.max(1, Math.ceil(Math.log(leaves) / Math.log(width) - 1e-9))
  const files: string[] = []
  let bytes = 0
  for (let leaf = 0; leaf < leaves; leaf++) {
    const parts: string[] = []
    for (let d = depth - 1, x = leaf; d >= 0; d--) {
      parts.push(`d${String(Math.floor(x / width ** d) % width).padStart(2, '0')}`)
    }
    const rel = path.join(top, ...parts)
    fs.mkdirSync(path.join(root, rel), { recursive: true })
    for (let i = leaf * width; i < Math.min(count, (leaf + 1) * width); i++) {
      const n = Math.max(1, Math.round(size()))
      const f = path.join(rel, `f${String(i).padStart(6, '0')}`)
      writeFileOfSize(path.join(root, f), n)
      files.push(f)
      bytes += n
    }
    if (leaf % 200 === 0 && count > 5000) process.stderr.write(`\r  ${top}: ${files.length} of ${count} files`)
  }
  if (count > 5000) process.stderr.write('\n')
  return { files, bytes }
}

// --- file systems and flat VMDKs -------------------------------------------------

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to
}

async function mkfs(fstype: FsType, file: string, bytes: number, tree: string, label: string): Promise<void> {
  fs.rmSync(file, { force: true })
  await run('truncate', ['-s', String(bytes), file])
  await run('mke2fs', ['-q', '-F', '-t', fstype, '-b', String(BLOCK), '-L', label, '-E', 'lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0', '-d', tree, file, String(bytes / BLOCK)])
}

/** e2fsck -fn of the file system at `offset` in `file` (through a read-only loop device). */
async function fsck(file: string, offset: number, size: number): Promise<void> {
  const dev = (await run('losetup', ['-r', '-f', '--show', '-o', String(offset), '--sizelimit', String(size), file])).stdout.trim()
  try {
    await run('e2fsck', ['-fn', dev])
  } finally {
    await run('losetup', ['-d', dev], { allowFail: true })
  }
}

interface FsSpec {
  raw: string
  size: number
  fstype: FsType
  mountAt: string
  /** Copy only meta-data (data blocks become holes). */
  metaOnly: boolean
}

/** An MBR disk of the given file systems (partitions from 1 MiB, back to back) as a flat VMDK. */
async function flatVmdk(dir: string, name: string, specs: FsSpec[]): Promise<BuiltImage> {
  const total = PART_OFFSET + specs.reduce((a, s) => a + s.size, 0)
  const vmdk = `${name}.vmdk`
  const flat = `${name}-flat.vmdk`
  fs.rmSync(path.join(dir, vmdk), { force: true })
  fs.rmSync(path.join(dir, flat), { force: true })
  // The descriptor as qemu-img writes it (it also creates an empty flat extent, replaced below).
  await run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', path.join(dir, vmdk), String(total)])
  const tmp = path.join(dir, `${flat}.tmp`)
  fs.rmSync(tmp, { force: true })
  await run('truncate', ['-s', String(total), tmp])
  const parts: GuestPart[] = []
  let at = PART_OFFSET
  const table = ['label: dos']
  for (const [i, s] of specs.entries()) {
    table.push(`start=${at / 512}, size=${s.size / 512}, type=83`)
    parts.push({ index: i + 1, offset: at, size: s.size, fstype: s.fstype, mountAt: s.mountAt })
    at += s.size
  }
  await run('sfdisk', ['-q', '--wipe', 'never', tmp], { input: table.join('\n') + '\n' })
  for (const [i, s] of specs.entries()) {
    await run('e2image', [s.metaOnly ? '-r' : '-ra', '-O', String(parts[i].offset), s.raw, tmp])
  }
  await run('fallocate', ['-d', tmp])
  if (fs.statSync(tmp).size !== total) throw new Error(`${tmp}: e2image changed its size`)
  for (const p of parts) await fsck(tmp, p.offset, p.size)
  fs.renameSync(tmp, path.join(dir, flat))
  const st = fs.statSync(path.join(dir, flat))
  const ins = JSON.parse((await run(process.execPath, [path.join(PROJECT_ROOT, 'dist', 'src', 'cli.js'), 'inspect', path.join(dir, flat), '--json'])).stdout) as {
    filesystems: { classes: Record<string, { bytes: number }>; bytesRead: number; mapBytes: number }[]
    fileMapBytes?: number
  }
  let meta = 0
  let read = 0
  for (const f of ins.filesystems) {
    read += f.bytesRead
    for (const [c, v] of Object.entries(f.classes)) if (c !== 'data' && c !== 'free') meta += v.bytes
  }
  return { name, vmdk, flat, bytes: total, allocatedBytes: st.blocks * 512, parts, metadataBytes: meta, scanBytesRead: read, mapBytes: ins.fileMapBytes ?? 0 }
}

// --- the OS tree -------------------------------------------------------------------

const BOOT_PROGRAMS = [
  'usr/lib/systemd/systemd',
  'usr/lib/systemd/systemd-journald',
  'usr/lib/systemd/systemd-udevd',
  'usr/lib/systemd/systemd-logind',
  'usr/lib/systemd/systemd-networkd',
  'usr/lib/systemd/systemd-resolved',
  'usr/lib/systemd/systemd-timesyncd',
  'usr/bin/udevadm',
  'usr/bin/systemctl',
  'usr/bin/bash',
  'usr/bin/dash',
  'usr/bin/mount',
  'usr/bin/login',
  'usr/bin/dbus-daemon',
  'usr/bin/kmod',
  'usr/sbin/agetty',
  'usr/sbin/sshd',
  'usr/sbin/cron',
  'usr/sbin/rsyslogd',
  'usr/sbin/ip',
  'usr/sbin/e2fsck',
  'usr/sbin/fsck',
]

const OS_DIRS = ['etc', 'usr/lib/x86_64-linux-gnu', 'usr/lib/systemd', 'usr/bin', 'usr/sbin']

/** Every regular file and symlink under /<rel> (host), sorted. */
function walkHost(rel: string): { rel: string; size: number; link: boolean }[] {
  const out: { rel: string; size: number; link: boolean }[] = []
  const go = (r: string) => {
    let names: string[]
    try {
      names = fs.readdirSync('/' + r).sort()
    } catch {
      return
    }
    for (const n of names) {
      const c = path.join(r, n)
      let st: fs.Stats
      try {
        st = fs.lstatSync('/' + c)
      } catch {
        continue
      }
      if (st.isDirectory()) go(c)
      else if (st.isFile()) out.push({ rel: c, size: st.size, link: false })
      else if (st.isSymbolicLink()) out.push({ rel: c, size: 0, link: true })
    }
  }
  go(rel)
  return out
}

function copyIn(root: string, rel: string, link: boolean): boolean {
  const dst = path.join(root, rel)
  try {
    fs.lstatSync(dst)
    return false // already there
  } catch {
    /* not yet */
  }
  fs.mkdirSync(path.dirname(dst), { recursive: true })
  try {
    if (link) fs.symlinkSync(fs.readlinkSync('/' + rel), dst)
    else {
      fs.copyFileSync('/' + rel, dst)
      fs.chmodSync(dst, fs.statSync('/' + rel).mode & 0o7777)
    }
    return true
  } catch {
    return false
  }
}

async function lddClosure(programs: string[]): Promise<string[]> {
  const libs = new Set<string>()
  for (const p of programs) {
    const r = await run('ldd', ['/' + p], { allowFail: true })
    for (const m of r.stdout.matchAll(/=>\s+(\/\S+)\s+\(/g)) {
      try {
        const real = fs.realpathSync(m[1])
        if (real.startsWith('/usr/lib/x86_64-linux-gnu/')) libs.add(real.slice(1))
      } catch {
        /* gone */
      }
    }
  }
  return [...libs].sort()
}

async function osTrees(work: string, p: ImageParams): Promise<{ boot: string; root: string; list: string[]; rootBytes: number; listBytes: number }> {
  const uni = rng(0x0b007)
  const bootDir = path.join(work, 'os-boot')
  const rootDir = path.join(work, 'os-root')
  fs.mkdirSync(bootDir, { recursive: true })
  fs.mkdirSync(path.join(rootDir, 'boot'), { recursive: true })
  const fillRandom = (file: string, n: number) => {
    const b = Buffer.alloc(n)
    for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(uni() * 0xffffffff) >>> 0, i)
    fs.writeFileSync(file, b)
  }
  fillRandom(path.join(bootDir, 'vmlinuz-bench'), p.kernelBytes)
  fillRandom(path.join(bootDir, 'initrd.img-bench'), p.initrdBytes)

  const host = OS_DIRS.flatMap(walkHost)
  const byRel = new Map(host.map((h) => [h.rel, h]))
  const programs = BOOT_PROGRAMS.filter((x) => byRel.get(x) && !byRel.get(x)!.link)
  const closure = await lddClosure(programs)
  const libs = [...closure]
  let libBytes = libs.reduce((a, l) => a + (byRel.get(l)?.size ?? 0), 0)
  const candidates = host
    .filter((h) => !h.link && h.rel.startsWith('usr/lib/x86_64-linux-gnu/') && /\.so(\.|$)/.test(path.basename(h.rel)) && h.size <= 8 * MiB && !closure.includes(h.rel))
    .sort((a, b) => b.size - a.size || (a.rel < b.rel ? -1 : 1))
  for (const c of candidates) {
    if (libs.length >= p.bootLibs) break
    if (libBytes + c.size > p.bootLibBytes) continue
    libs.push(c.rel)
    libBytes += c.size
  }
  let etc = host.filter((h) => !h.link && h.rel.startsWith('etc/')).map((h) => h.rel)
  if (etc.length > p.bootEtcFiles) etc = shuffle([...etc], uni).slice(0, p.bootEtcFiles).sort()

  // The root tree: what the boot reads first, then the rest in path order, up to the cap.
  let bytes = 0
  const want = [...programs, ...libs, ...etc]
  const copied = new Set<string>()
  for (const rel of want) {
    const h = byRel.get(rel)
    if (h && copyIn(rootDir, rel, false)) {
      copied.add(rel)
      bytes += h.size
    }
  }
  for (const h of host) {
    if (copied.has(h.rel)) continue
    if (!h.link && bytes + h.size > p.osCapBytes) continue
    if (copyIn(rootDir, h.rel, h.link)) bytes += h.size
  }
  if (byRel.has('usr/lib/systemd/systemd')) {
    fs.mkdirSync(path.join(rootDir, 'sbin'), { recursive: true })
    fs.copyFileSync('/usr/lib/systemd/systemd', path.join(rootDir, 'sbin', 'init'))
    fs.chmodSync(path.join(rootDir, 'sbin', 'init'), 0o755)
  }
  // The read order: kernel, initrd, init, then programs, libraries and configuration interleaved.
  const rest = shuffle([...programs, ...libs, ...etc].filter((r) => copied.has(r)), uni)
  const list = ['boot/vmlinuz-bench', 'boot/initrd.img-bench', ...(byRel.has('usr/lib/systemd/systemd') ? ['sbin/init'] : []), ...rest]
  const listBytes = p.kernelBytes + p.initrdBytes + rest.reduce((a, r) => a + (byRel.get(r)?.size ?? 0), 0)
  return { boot: bootDir, root: rootDir, list, rootBytes: bytes, listBytes }
}

// --- the set -------------------------------------------------------------------------

export function imageKey(scale: number): string {
  return `v${BUILD_VERSION}-scale-${scale}`
}

/** The cached image set for this scale, built if missing. */
export async function ensureImages(scale: number): Promise<ImageSet> {
  const key = imageKey(scale)
  const dir = path.join(IMAGES_ROOT, key)
  const manifest = path.join(dir, 'manifest.json')
  if (fs.existsSync(manifest)) {
    const set = JSON.parse(fs.readFileSync(manifest, 'utf8')) as ImageSet
    set.dir = dir
    const ok = [set.data.ext4, set.data.ext3, set.os].every((im) => fs.existsSync(path.join(dir, im.flat)) && fs.statSync(path.join(dir, im.flat)).size === im.bytes)
    if (ok) return set
    progress(`image cache ${dir} is incomplete: rebuilding`)
  }
  const p = imageParams(scale)
  const t0 = Date.now()
  const building = `${dir}.building`
  fs.rmSync(building, { recursive: true, force: true })
  fs.mkdirSync(building, { recursive: true })
  const work = path.join(building, 'work')
  fs.mkdirSync(work)

  progress(`building images (${key}): a fileserver tree of ${p.fileserverFiles} files, Gamma(${p.gammaShape}) sizes of mean ${fmtBytes(p.meanFileBytes)}, width ${p.dirWidth}; ${p.wwwFiles} webserver files`)
  const tree = path.join(work, 'tree')
  fs.mkdirSync(tree)
  const fsSet = fileSet(tree, 'fileserver', p.fileserverFiles, p.dirWidth, gamma(rng(0xf11e), p.meanFileBytes, p.gammaShape))
  const wwwSet = fileSet(tree, 'www', p.wwwFiles, p.dirWidth, gamma(rng(0x3e3), p.wwwMeanBytes, p.gammaShape))
  const dataBytes = fsSet.bytes + wwwSet.bytes
  const fsBytes = Math.max(512 * MiB, roundUp(dataBytes * 1.45, 256 * MiB))
  const data = {} as Record<FsType, BuiltImage>
  for (const t of ['ext4', 'ext3'] as FsType[]) {
    progress(`  mke2fs -t ${t} -d (${fmtBytes(dataBytes)} of files in a ${fmtBytes(fsBytes)} file system), e2image, e2fsck`)
    const raw = path.join(work, `data-${t}.raw`)
    await mkfs(t, raw, fsBytes, tree, `data-${t}`)
    data[t] = await flatVmdk(building, `data-${t}`, [{ raw, size: fsBytes, fstype: t, mountAt: '', metaOnly: true }])
    fs.rmSync(raw, { force: true })
  }
  fs.rmSync(tree, { recursive: true, force: true })

  progress('  OS image: copying this machine\'s /etc and /usr subsets, boot list')
  const os = await osTrees(work, p)
  const bootFs = 64 * MiB
  const rootFs = Math.max(512 * MiB, roundUp(os.rootBytes * 1.6, 64 * MiB))
  await mkfs('ext4', path.join(work, 'os-boot.raw'), bootFs, os.boot, 'boot')
  await mkfs('ext4', path.join(work, 'os-root.raw'), rootFs, os.root, 'root')
  const osImage = await flatVmdk(building, 'os', [
    { raw: path.join(work, 'os-boot.raw'), size: bootFs, fstype: 'ext4', mountAt: 'boot', metaOnly: false },
    { raw: path.join(work, 'os-root.raw'), size: rootFs, fstype: 'ext4', mountAt: '', metaOnly: false },
  ])
  fs.rmSync(work, { recursive: true, force: true })

  const set: ImageSet = {
    dir,
    key,
    params: p,
    data,
    os: osImage,
    fileserverFiles: fsSet.files.length,
    fileserverBytes: fsSet.bytes,
    www: wwwSet.files,
    boot: os.list,
    bootBytes: os.listBytes,
    buildSeconds: (Date.now() - t0) / 1000,
  }
  fs.writeFileSync(path.join(building, 'manifest.json'), JSON.stringify(set, null, 1))
  fs.rmSync(dir, { recursive: true, force: true })
  fs.renameSync(building, dir)
  progress(`images built in ${set.buildSeconds.toFixed(0)} s: ${dir}`)
  return set
}
