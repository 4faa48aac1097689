#!/usr/bin/env node
// vmdi-fuse command line. Every error is one line naming the thing at fault
// and the fix, with a non-zero exit status.

// More libuv threads: every store read and write of the mount runs there.
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '16'

import { Command, CommanderError, Option } from 'commander'
import { CliError } from './errors'
import { log } from './log'
import { describeAcceptedOptions, FIXED_OPTIONS } from './fuse/options'
import { runDetached, runForeground, unmount, VERSION } from './fuse/daemon'
import type { MountConfig } from './settings'
import { pidAlive, readRecord } from './fuse/runtime'
import { daemonExited } from './fuse/daemon'
import { askControl, type AnswerTo, type ControlRequest, type StatusAnswer } from './control/protocol'
import fs from 'fs'
import path from 'path'
import { runInspect, type InspectCliOptions } from './cmd/inspect'
import { formatSize } from './size'

const program = new Command()

program
  .name('vmdi-fuse')
  .description(
    'Mount a datastore of virtual machine disk images through FUSE. Every file of STORE is\n' +
      'visible and writable at MOUNTPOINT exactly as it is underneath; re-export MOUNTPOINT\n' +
      'over NFS (--nfs) to hypervisors, or run VMs and benchmarks on it directly.',
  )
  .version(VERSION, '-V, --version', 'print the version and exit')
  // A subcommand's options are its own (inspect --small-files, recover --ssd), not the mount's of the same name.
  .enablePositionalOptions()
  .argument('<store>', 'directory that holds the disk images (the HDD datastore)')
  .argument('<mountpoint>', 'empty directory to mount on (outside STORE)')
  .option('-f, --foreground', 'stay attached to the terminal (systemd, tests); otherwise detach once mounted')
  .option(
    '-o, --options <opts>',
    'extra mount options, comma separated, repeatable. Accepted: ' + describeAcceptedOptions(),
    (v: string, prev: string[]) => prev.concat(v),
    [] as string[],
  )
  .option('--nfs', 'set what a knfsd re-export needs (noforget: file handles stay valid); see README for /etc/exports')
  .option('--force', 'clear a stale mount left at MOUNTPOINT by a daemon that died, then mount')
  .option('--log <file>', 'log file when detached', '/var/log/vmdi-fuse.log')
  .option('--debug', 'log every FUSE request (libfuse debug) and debug messages')
  .option('--no-introspect', 'pure pass-through: no image is looked into, nothing cached or redirected (the benchmark baseline)')
  .option('--ram-cache <size>', 'RAM for cached meta-data blocks, shared by all images (e.g. 512M, 2G; default 1/16 of RAM, at most 1G)')
  .option('--ssd <path>', 'the SSD block store (an SQLite file, on the SSD, outside STORE; default /var/lib/vmdi-fuse/<id>.sqlite)')
  .option('--ssd-max <size>', 'cap of the SSD block store (default half the free space of its file system, at most 16G); when full, clean blocks are evicted and meta-data writes go to the HDD')
  .option(
    '--exclude <glob>',
    'never introspect files matching this glob, relative to STORE (repeatable; as a shell globs: * and ? within a name, ** across directories, [a-z] classes, {a,b} braces; dot files match too). A VM owner can opt an image out with: setfattr -n user.vmdi.introspect -v off IMAGE',
    (v: string, prev: string[]) => prev.concat(v),
    [] as string[],
  )
  .option('--small-files <size>', "regular files up to SIZE have their data placed with the meta-data: RAM (what meta-data leaves), the SSD store, writes redirected and destaged (default 32K; 0: off, data of every file goes to the HDD)")
  .option('--no-boot-files', "do not look for the guests' boot files: by default the data of kernels and initial RAM disks in / and /boot, and of /sbin/init (symlinks followed), is placed with the meta-data, so a VM's boot reads them from RAM or the SSD store")
  .option('--new-data <size>', "writes to blocks the guest has just allocated (free in its file system's on-disk bitmaps: new files, appends) are held on the SSD store, like meta-data writes, while it holds less than SIZE of unwritten blocks, and written to the HDD in long runs while the guests pause (default 1G, at most half of --ssd-max; 0: off, new data goes straight to the HDD)")
  .option('--ram-floor <size>', "meta-data RAM each image keeps against the other images' blocks, so one VM with large meta-data cannot take all of it from the others (default fair: the RAM cache divided by the images attached; SIZE: that much each; 0: off, one LRU by priority for all)")
  .option('--emulate-hdd <profile>', 'benchmarking aid: every HDD file read and write completes no earlier than an emulated disk would (profiles: laptop5400, a 5400 RPM 2.5" drive). Not for production')
  .option('--introspect-memory <size>', "RAM all images' maps and running scans may take together (default 1/8 of RAM, at most 4G); an image whose scan would pass it is not introspected (served as data, a log line names it)")
  .option(
    '--cache-mode <mode>',
    'introspect (default); conventional: the benchmark baseline, RAM spent on a plain LRU of all blocks with read-ahead, no classes, no SSD; block-cache: the benchmark peer, conventional plus an SSD block cache of --ssd-max like bcache write-back (any block, LRU, 4 MiB sequential cutoff)',
  )
  .option('--metrics <[host:]port>', 'serve Prometheus metrics on http://HOST:PORT/metrics (HOST defaults to 127.0.0.1): per image and class hits and writes, dirty blocks, scan and preload progress, SSD store and RAM use, FUSE op counts and latencies')
  .addHelpText(
    'after',
    '\nAlways set: ' +
      FIXED_OPTIONS.map(([o, why]) => `${o} (${why})`).join('; ') +
      '.\n\nExamples:\n' +
      '  vmdi-fuse /hdd/store /export                 mount and detach\n' +
      '  vmdi-fuse -f --nfs /hdd/store /export        stay attached, ready for knfsd\n' +
      '  vmdi-fuse umount /export                     unmount and wait for the daemon to exit\n' +
      '  vmdi-fuse status /export --json              what the daemon is doing\n' +
      '  vmdi-fuse stats /export                      per image and class: hits, redirected writes, dirty blocks, scans\n' +
      '  vmdi-fuse destage /export vm1.img            write what the SSD store holds back of vm1.img to the HDD now\n' +
      '  vmdi-fuse -f --ssd /ssd/vmdi.sqlite --ram-cache 2G --exclude \'scratch/**\' /hdd/store /export\n',
  )
  .action(async (store: string, mountpoint: string, o: Record<string, unknown>) => {
    const cfg: MountConfig = {
      store,
      mountpoint,
      foreground: Boolean(o.foreground),
      options: (o.options as string[]) ?? [],
      nfs: Boolean(o.nfs),
      force: Boolean(o.force),
      debug: Boolean(o.debug),
      log: o.foreground ? (process.env.VMDI_FUSE_DETACHED ? (o.log as string) : null) : (o.log as string),
      introspect: o.introspect !== false,
      ramCache: o.ramCache as string | undefined,
      ssd: o.ssd as string | undefined,
      ssdMax: o.ssdMax as string | undefined,
      exclude: (o.exclude as string[]) ?? [],
      emulateHdd: o.emulateHdd as string | undefined,
      cacheMode: o.cacheMode as string | undefined,
      smallFiles: o.smallFiles as string | undefined,
      newData: o.newData as string | undefined,
      ramFloor: o.ramFloor as string | undefined,
      bootFiles: o.bootFiles !== false,
      metrics: o.metrics as string | undefined,
      introspectMemory: o.introspectMemory as string | undefined,
    }
    if (cfg.foreground) {
      const detached = typeof process.send === 'function' && process.env.VMDI_FUSE_DETACHED === '1'
      try {
        await runForeground(cfg, () => {
          if (detached) process.send!({ ready: true })
        })
      } catch (e) {
        if (detached) process.send!({ error: (e as Error).message })
        throw e
      }
      return
    }
    const argv = process.argv.slice(1).filter((a) => a !== '--foreground' && a !== '-f')
    const r = await runDetached(cfg, argv)
    process.stdout.write(`vmdi-fuse: mounted ${path.resolve(store)} on ${path.resolve(mountpoint)} (daemon pid ${r.pid}, log ${r.log})\n`)
  })

program
  .command('umount')
  .alias('unmount')
  .description('unmount MOUNTPOINT and wait until its daemon has finished in-flight operations, closed its files and exited')
  .argument('<mountpoint>', 'the mount point of a running vmdi-fuse')
  .option('--lazy', 'detach even while files are open (the daemon exits after they close or after a grace period)')
  .action(async (mountpoint: string, o: { lazy?: boolean }) => {
    const real = await unmount(mountpoint, { lazy: Boolean(o.lazy), progress: (line) => process.stderr.write(`vmdi-fuse: ${line}\n`) })
    process.stdout.write(`vmdi-fuse: unmounted ${real}\n`)
  })

/** The control socket of the daemon serving `mountpoint`, or a CliError naming what is wrong. */
async function askDaemon<R extends ControlRequest>(mountpoint: string, req: R, timeoutMs?: number): Promise<AnswerTo<R>> {
  let real: string
  try {
    real = fs.realpathSync(mountpoint)
  } catch {
    throw new CliError(`${mountpoint} is not reachable: is it a stale mount (vmdi-fuse --force) or a typo?`)
  }
  const rec = readRecord(real)
  if (!rec) throw new CliError(`no vmdi-fuse daemon serves ${mountpoint} (no record in /run/vmdi-fuse): mount it first`)
  // A daemon that dies during the request (kill -9, a crash) ends the request within a second or two.
  let watch: NodeJS.Timeout | undefined
  const died = new Promise<never>((_, reject) => {
    watch = setInterval(() => {
      if (!pidAlive(rec.pid)) reject(new Error('exited'))
    }, 500)
  })
  try {
    return await Promise.race([askControl(rec.socket, req, timeoutMs), died])
  } catch (e) {
    const m = (e as Error).message
    if (!pidAlive(rec.pid)) throw new CliError(daemonExited(mountpoint, rec))
    if (/ECONNREFUSED|ENOENT|no answer/.test(m)) throw new CliError(`the daemon of ${mountpoint} (pid ${rec.pid}) does not answer on ${rec.socket}: ${m}`)
    throw new CliError(m)
  } finally {
    clearInterval(watch)
  }
}

program
  .command('status')
  .description('what the daemon serving MOUNTPOINT is doing: store, options, open files, operations, per-thread state')
  .argument('<mountpoint>', 'the mount point of a running vmdi-fuse')
  .option('--json', 'machine-readable output')
  .option('--watch', 'redraw every second until Ctrl-C (with --json: one JSON document per line)')
  .action(async (mountpoint: string, o: { json?: boolean; watch?: boolean }) => {
    const show = async () => {
      const st = await askDaemon(mountpoint, { cmd: 'status' })
      if (o.json) return JSON.stringify(st, null, o.watch ? undefined : 2) + '\n'
      return formatStatus(st)
    }
    if (!o.watch) {
      process.stdout.write(await show())
      return
    }
    const tty = process.stdout.isTTY && !o.json
    for (;;) {
      const text = await show()
      process.stdout.write(tty ? `\x1b[H\x1b[2J${text}` : text)
      await new Promise((r) => setTimeout(r, 1000))
    }
  })

/** A job's progress on one line: blocks done of total, rate, time left. */
function formatProgress(p: StatusAnswer['images'][number]['progress']['scan']): string {
  if (p.state === 'pending') return 'pending'
  const pct = p.totalBlocks ? ` (${Math.floor((100 * p.doneBlocks) / p.totalBlocks)}%)` : ''
  const rate = p.mibPerSec === null ? '' : `, ${p.mibPerSec.toFixed(1)} MiB/s`
  const eta = p.state === 'running' && p.etaSec !== null ? `, ETA ${Math.ceil(p.etaSec)} s` : ''
  return `${p.state} ${p.doneBlocks}/${p.totalBlocks} blocks${pct}${rate}${eta}`
}

/** `vmdi-fuse status`, human. */
function formatStatus(st: StatusAnswer): string {
  const { ops, threads, direct, ramNative } = st
  return (
    [
      `mount point  ${st.mountpoint}`,
      `store        ${st.store}`,
      `daemon       pid ${st.pid}, version ${st.version}`,
      `options      ${st.options.join(',')}`,
      `open files   ${st.openFiles}`,
      `in flight    ${st.inFlight}`,
      `threads      ${threads.created} per-thread states made, ${threads.parked} parked for reuse`,
      `direct I/O   ${direct.reads} reads (${formatSize(direct.readBytes, { unit: 'MiB' })}), ${direct.writes} writes (${formatSize(direct.writeBytes, { unit: 'MiB' })}) served on the FUSE threads`,
      ...(ramNative && ramNative.hits + ramNative.fallbacks > 0
        ? [`RAM native   ${ramNative.requests} image reads (${ramNative.hits} blocks) answered from the RAM tier on the FUSE threads, ${ramNative.fallbacks} sent to the datapath`]
        : []),
      `operations   ${Object.entries(ops).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}`,
      ...st.images.flatMap((im) => [`image        ${im.path}: scan ${im.scan}`, `  scan       ${formatProgress(im.progress.scan)}`, `  preload    ${formatProgress(im.progress.preload)}`]),
    ].join('\n') + '\n'
  )
}

program
  .command('stats')
  .description('per image and per block class: reads, RAM/SSD hits, HDD reads, writes, redirected writes, dirty and destaged blocks, scan state')
  .argument('<mountpoint>', 'the mount point of a running vmdi-fuse')
  .option('--json', 'machine-readable output (keys documented in the README)')
  .action(async (mountpoint: string, o: { json?: boolean }) => {
    const st = await askDaemon(mountpoint, { cmd: 'stats' })
    if (o.json) {
      process.stdout.write(JSON.stringify(st, null, 2) + '\n')
      return
    }
    const hddLine = st.hdd ? [`emulated   ${st.hdd.profile}: ${st.hdd.requests} requests, ${st.hdd.seekCylinders} cylinders of seeks, ${st.hdd.cacheHits} drive-cache hits, ${(st.hdd.busyMs / 1000).toFixed(1)} s busy`] : []
    if (st.mode === 'passthrough') {
      process.stdout.write([`mode       pass-through (--no-introspect): no image is introspected, nothing is cached or held back`, ...hddLine].join('\n') + '\n')
      return
    }
    const mib = (blocks: number) => formatSize(blocks * 4096, { unit: 'MiB' })
    const lines = [
      `mode       ${st.mode}`,
      ...hddLine,
      `RAM cache  ${st.ram.blocks}/${st.ram.capacity} blocks (${mib(st.ram.blocks)} of ${mib(st.ram.capacity)}), ${st.ram.hits} hits, ${st.ram.misses} misses, ${st.ram.evictions} evictions`,
      `SSD store  ${st.ssd.path}: ${st.ssd.heldBlocks} blocks held (${mib(st.ssd.heldBlocks)}, cap ${mib(st.ssd.capBlocks)}), ${st.ssd.dirtyBlocks} dirty${st.ssd.failed ? `, FAILED: ${st.ssd.failed}` : ''}`,
    ]
    for (const r of st.refused) lines.push(`REFUSED    ${r} (see the log for the recover command)`)
    for (const im of st.images) {
      lines.push('', `${im.path}  scan ${im.scan.state}${im.scan.state === 'done' ? ` in ${im.scan.ms} ms (${im.scan.format}, map ${im.scan.mapBytes} B)` : ''}${im.scan.error ? `: ${im.scan.error}` : ''}`)
      lines.push(`  dirty ${im.dirtyBlocks}, destaged ${im.destaged}, on SSD ${im.ssdBlocks}, deferred ${im.deferred}, promoted ${im.promoted}, reclassified ${im.reclassified}, written through ${im.writeThrough}, preloaded ${im.preloaded} (${im.scanKept} of them kept from the scan's reads), copied to RAM from the SSD store at attach ${im.ramRefilled}, read ahead ${im.readAhead}, RAM hits served natively ${im.nativeRamHits}, new-data blocks written to the SSD store first ${im.absorbed}`)
      lines.push(`  in RAM: ${im.ramBlocks} block(s), ${im.ramMetaBlocks} of meta-data priority (kept against other images up to --ram-floor)`)
      lines.push(`  native data path: ${im.nativeReads} read(s) (${formatSize(im.nativeReadBytes)}), ${im.nativeWrites} write(s) (${formatSize(im.nativeWriteBytes)}) served on the FUSE threads`)
      lines.push(`  ${'class'.padEnd(18)}${['reads', 'RAM hits', 'SSD hits', 'HDD reads', 'writes', 'redirected', 'RMW loads'].map((h) => h.padStart(11)).join('')}`)
      for (const [c, v] of Object.entries(im.classes)) {
        lines.push(`  ${c.padEnd(18)}${[v.reads, v.ramHits, v.ssdHits, v.hddReads, v.writes, v.redirected, v.rmwLoads].map((n) => String(n).padStart(11)).join('')}`)
      }
    }
    if (!st.images.length) lines.push('', 'no image attached yet (images attach when first opened)')
    process.stdout.write(lines.join('\n') + '\n')
  })

program
  .command('destage')
  .description('write the dirty blocks the SSD store holds back (meta-data, small and boot files\' data, new data) of every image (or of IMAGE, relative to STORE) to the HDD now, and wait until they are synced')
  .argument('<mountpoint>', 'the mount point of a running vmdi-fuse')
  .argument('[image]', 'one image, by its path relative to STORE')
  .option('--json', 'machine-readable output')
  .action(async (mountpoint: string, image: string | undefined, o: { json?: boolean }) => {
    const r = await askDaemon(mountpoint, image === undefined ? { cmd: 'destage' } : { cmd: 'destage', image }, 3_600_000)
    if (o.json) process.stdout.write(JSON.stringify(r) + '\n')
    else for (const x of r) process.stdout.write(`vmdi-fuse: ${x.path}: ${x.blocks} block(s) written back to the HDD\n`)
  })

program
  .command('install-service')
  .description('write a systemd unit that mounts STORE on MOUNTPOINT at boot (Type=notify, Restart=on-failure, before nfs-server and nfs-ganesha); mount options go after --')
  .argument('<store>', 'directory that holds the disk images')
  .argument('<mountpoint>', 'where to mount it')
  .argument('[options...]', 'the mount options, after --, as on the command line (e.g. -- --nfs --ssd /ssd/vmdi.sqlite)')
  .option('--name <unit>', 'unit name (default vmdi-fuse-<mount point, escaped>.service)')
  .option('--unit-dir <dir>', 'where to write it', '/etc/systemd/system')
  .option('--print', 'print the unit instead of writing it')
  .addHelpText('after', '\nExample:\n  vmdi-fuse install-service /hdd/store /export -- --nfs --ssd /ssd/vmdi.sqlite --ram-cache 2G\n  systemctl enable --now vmdi-fuse-export.service\n')
  .action(async (store: string, mountpoint: string, options: string[], o: import('./cmd/service').ServiceOptions) => {
    const { runInstallService } = await import('./cmd/service')
    await runInstallService(store, mountpoint, options, o)
  })

program
  .command('recover')
  .description(
    'resolve an image the mount refused because it changed on the HDD while the SSD store held unwritten\n' +
      'blocks of it. Run with the store unmounted.',
  )
  .argument('<image>', 'the image file on the HDD (as named in the refusal)')
  .option('--apply', 'write the SSD store\'s blocks over the image (the guest\'s last writes through the mount win)')
  .option('--discard', 'drop the store\'s blocks and map of the image (the HDD file as it is now wins)')
  .option('--ssd <path>', 'the SSD store the mount used (default: the default store of the image\'s datastore)')
  .option('--json', 'machine-readable output')
  .action(async (image: string, o: import('./cmd/recover').RecoverOptions) => {
    const { runRecover } = await import('./cmd/recover')
    await runRecover(image, o)
  })

program
  .command('export')
  .description('print a ready NFS-Ganesha EXPORT block (FSAL_VFS) for the vmdi-fuse mount at MOUNTPOINT; with --full a whole ganesha.conf')
  .argument('<mountpoint>', 'the mount point of a running vmdi-fuse (mounted with --nfs)')
  .option('--ganesha', 'for NFS-Ganesha (for knfsd see the README: /etc/exports with fsid=)')
  .option('--pseudo <path>', 'the NFSv4 pseudo path clients mount (NFSv3 too: mount_path_pseudo)', '/ds')
  .option('--export-id <n>', 'Export_Id, unique per Ganesha server (1-65535)', '1')
  .option('--full', 'a whole ganesha.conf: NFS_CORE_PARAM (NFSv3 and v4 over TCP), NFSv4 (graceless), NFS_KRB5 off, then the EXPORT')
  .option('--recovery-root <dir>', 'NFSv4 RecoveryRoot of the --full config', '/var/lib/nfs/ganesha')
  .addHelpText(
    'after',
    '\nExamples:\n' +
      '  vmdi-fuse export --ganesha /export >> /etc/ganesha/ganesha.conf\n' +
      '  vmdi-fuse export --ganesha --full --pseudo /vms /export > /etc/ganesha/ganesha.conf\n',
  )
  .action(async (mountpoint: string, o: import('./cmd/export').ExportOptions) => {
    const { runExport } = await import('./cmd/export')
    await runExport(mountpoint, o)
  })

program
  .command('inspect')
  .description(
    'look inside one disk image without mounting: container format and files, volumes, and for every\n' +
      'ext2/3/4 file system the class of every block (what the mount keeps on the SSD and in RAM)',
  )
  .argument('<image>', 'an image file (raw, VMDK, VHD, VDI, qcow2; decided by content, not by name)')
  .option('--json', 'machine-readable output (keys documented in the README)')
  .option('--map', 'print the meta-data byte ranges of each backing file: [offset, length, class]')
  .option('--at <offset>', 'what lives at this byte of the image file: class, inode and path')
  .option('--no-scan', 'container and volumes only, no file-system scan')
  .option('--store <dir>', 'directory extent and parent files must stay inside (default: the image\'s directory)')
  .option('--small-files <size>', "class the data of regular files up to SIZE small-file, as a mount with --small-files SIZE places it (default: off here; the mount's default is 32K)")
  .option('--boot-files', "class the data of the guest's boot files boot-file, as the mount does by default (kernels and initial RAM disks in / and /boot, and /sbin/init)")
  .addHelpText(
    'after',
    '\nExit status: 0 a disk image, 2 not a disk image, 1 usage, I/O or corrupt-image errors.\n\nExamples:\n' +
      '  vmdi-fuse inspect /hdd/store/vm1.vmdk\n' +
      '  vmdi-fuse inspect /hdd/store/vm1.qcow2 --json\n' +
      '  vmdi-fuse inspect /hdd/store/vm1.img --map --json > map.json\n' +
      '  vmdi-fuse inspect /hdd/store/vm1.img --at 0x12345000\n',
  )
  .action(async (image: string, o: InspectCliOptions) => {
    await runInspect(image, o)
  })

async function main(): Promise<void> {
  program.exitOverride()
  try {
    await program.parseAsync(process.argv)
  } catch (e) {
    if (e instanceof CommanderError) {
      // commander already printed its message (usage errors, --help, --version).
      // inspect's contract keeps 2 for "not a disk image": its usage errors are 1.
      process.exit(e.exitCode === 0 ? 0 : process.argv[2] === 'inspect' ? 1 : 2)
    }
    if (e instanceof CliError) {
      process.stderr.write(`vmdi-fuse: ${e.message}\n`)
      process.exit(e.exitCode)
    }
    log.error((e as Error)?.stack ?? String(e))
    process.exit(1)
  }
}

void main()
export { program, Option }
