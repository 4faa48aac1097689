// npm run bench:nfs [-- --rounds N --image-mib N --write-mib N]
//
// NFS re-export through NFS-Ganesha (FSAL_VFS), user space on both ends: one
// Ganesha serves two exports of identical stores, /plain (the store directory
// itself) and /ds (a vmdi-fuse --nfs mount of its twin, the config printed by
// `vmdi-fuse export --ganesha`), and libnfs clients time
//   - reads of the whole ext4 image (default 1 GiB) over NFSv3 and NFSv4 (nfs-cat);
//   - a new file written over NFSv3 (nfs-cp; NFSv4 writes over 3,750 bytes fail
//     in Debian's libnfs 4.0);
//   - an in-place rewrite of a span of the image over NFSv3 (our nfs-pwrite,
//     native/tools/nfs-pwrite.c), with the image's own bytes, so it stays valid.
// Each round runs every row on both exports, interleaved; the table shows the
// medians in MB/s and mount/plain. The store files are in the page cache (no
// drop_caches between runs: the machine is shared), so this measures the
// mount's own cost under NFS, not the disk's.
import { execFileSync, spawnSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { PROJECT_ROOT } from '../src/root'
import { coreBlocks, exportBlock, pluginsDir } from '../src/cmd/export'
import { buildNfsPwrite, Ganesha, nfsToolsMissing, nfsUrl, startRpcbind } from './nfs-rig'

const CLI = path.join(PROJECT_ROOT, 'dist', 'src', 'cli.js')

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`)
  const v = i >= 0 ? Number(process.argv[i + 1]) : dflt
  if (!Number.isInteger(v) || v <= 0) throw new Error(`--${name}: expected a positive integer, saw ${process.argv[i + 1]}`)
  return v
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

/** Runs `cmd` with its stdout to /dev/null (or `input` on stdin) and returns the seconds it took. */
function timed(cmd: string, args: string[], input?: Buffer): number {
  const t0 = process.hrtime.bigint()
  const r = spawnSync(cmd, args, { input, stdio: [input ? 'pipe' : 'ignore', 'ignore', 'pipe'], maxBuffer: 1 << 20, timeout: 600_000 })
  const s = Number(process.hrtime.bigint() - t0) / 1e9
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}: ${String(r.stderr)}`)
  return s
}

async function main(): Promise<void> {
  const rounds = arg('rounds', 3)
  const imageMiB = arg('image-mib', 1024)
  const writeMiB = arg('write-mib', 256)
  const missing = nfsToolsMissing()
  if (missing) throw new Error(`bench:nfs needs ${missing} (scripts/setup.sh installs them)`)
  const plugins = pluginsDir()
  if (!plugins) throw new Error('no Ganesha FSAL_VFS plugin: apt-get install nfs-ganesha-vfs')

  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-bench-nfs-'))
  const plain = path.join(base, 'plain')
  const twin = path.join(base, 'store')
  const mnt = path.join(base, 'mnt')
  for (const d of [plain, twin, mnt, path.join(base, 'tree'), path.join(base, 'recovery')]) fs.mkdirSync(d, { recursive: true })
  let ganesha: Ganesha | null = null
  let mounted = false
  const rpcbind = await startRpcbind()
  try {
    const pwrite = buildNfsPwrite(base)
    // The image: ext4 holding one file of random bytes that fills most of it.
    const img = path.join(plain, 'vm.img')
    const fill = Math.floor(imageMiB * 0.85)
    execFileSync('sh', ['-c', `head -c ${fill}M /dev/urandom > ${path.join(base, 'tree', 'data.bin')}`])
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', path.join(base, 'tree'), img, `${imageMiB}M`])
    fs.rmSync(path.join(base, 'tree'), { recursive: true })
    fs.copyFileSync(img, path.join(twin, 'vm.img'))
    const newFile = path.join(base, 'new.bin')
    execFileSync('sh', ['-c', `head -c ${writeMiB}M /dev/urandom > ${newFile}`])
    // The rewrite: a span of the image, from its middle, with its own bytes.
    const span = writeMiB << 20
    const spanAt = Math.floor(imageMiB / 2) << 20
    const spanBytes = Buffer.alloc(span)
    const fd = fs.openSync(img, 'r')
    fs.readSync(fd, spanBytes, 0, span, spanAt)
    fs.closeSync(fd)

    execFileSync(process.execPath, [CLI, '--nfs', '--log', path.join(base, 'vmdi.log'), twin, mnt], { env: { ...process.env, VMDI_STATE_DIR: path.join(base, 'state') }, stdio: 'ignore' })
    mounted = true
    const mountExport = execFileSync(process.execPath, [CLI, 'export', '--ganesha', '--export-id', '2', '--pseudo', '/ds', mnt], { encoding: 'utf8' })
    const conf = path.join(base, 'ganesha.conf')
    fs.writeFileSync(conf, [coreBlocks(plugins, path.join(base, 'recovery')), exportBlock(plain, plain, '/plain', 1), mountExport].join('\n'))
    ganesha = new Ganesha(conf, base, '/plain')
    await ganesha.start()

    type Row = { name: string; mib: number; run: (pseudo: string, round: number) => number }
    const rows: Row[] = [
      { name: `read ${imageMiB} MiB image, NFSv3`, mib: imageMiB, run: (p) => timed('nfs-cat', [nfsUrl(p, 'vm.img', 3)]) },
      { name: `read ${imageMiB} MiB image, NFSv4`, mib: imageMiB, run: (p) => timed('nfs-cat', [nfsUrl(p, 'vm.img', 4)]) },
      {
        name: `write new ${writeMiB} MiB file, NFSv3`,
        mib: writeMiB,
        // A fresh name each round: Ganesha caches directory entries, so a file removed behind its back still "exists".
        run: (p, round) => timed('nfs-cp', [newFile, nfsUrl(p, `new-${round}.bin`, 3)]),
      },
      { name: `rewrite ${writeMiB} MiB of the image in place, NFSv3`, mib: writeMiB, run: (p) => timed(pwrite, [nfsUrl(p, 'vm.img', 3), String(spanAt)], spanBytes) },
    ]
    const secs = new Map<string, { plain: number[]; mount: number[] }>(rows.map((r) => [r.name, { plain: [], mount: [] }]))
    // One untimed read of each: the image attaches and is scanned on the mount, both copies are in the page cache.
    for (const p of ['/plain', '/ds']) timed('nfs-cat', [nfsUrl(p, 'vm.img', 3)])
    for (let round = 0; round < rounds; round++) {
      for (const r of rows) {
        const order: ['plain' | 'mount', string][] = [
          ['plain', '/plain'],
          ['mount', '/ds'],
        ]
        if (round % 2) order.reverse()
        for (const [k, pseudo] of order) secs.get(r.name)![k].push(r.run(pseudo, round))
      }
      process.stderr.write(`bench:nfs: round ${round + 1}/${rounds} done\n`)
    }
    const commit = execFileSync('git', ['-C', PROJECT_ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim()
    const cpu = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) ?? [])[1] ?? 'unknown CPU'
    const lines = [
      `NFS-Ganesha (FSAL_VFS) + libnfs, ${rounds} interleaved rounds, medians; ${os.cpus().length} vCPU ${cpu}, ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, kernel ${os.release()}, commit ${commit}`,
      '',
      '| row | plain directory MB/s | vmdi-fuse mount MB/s | mount / plain |',
      '|---|---:|---:|---:|',
    ]
    for (const r of rows) {
      const s = secs.get(r.name)!
      const mbps = (t: number) => (r.mib * 1.048576) / t
      const a = mbps(median(s.plain))
      const b = mbps(median(s.mount))
      lines.push(`| ${r.name} | ${a.toFixed(0)} | ${b.toFixed(0)} | ${(b / a).toFixed(2)}× |`)
    }
    process.stdout.write(lines.join('\n') + '\n')
    // The rewritten image is still a clean file system once the mount has written everything back.
    await ganesha.stop()
    ganesha = null
    execFileSync(process.execPath, [CLI, 'umount', mnt], { stdio: 'ignore' })
    mounted = false
    const fsck = spawnSync('e2fsck', ['-fn', path.join(twin, 'vm.img')], { encoding: 'utf8' })
    if (fsck.status !== 0) throw new Error(`e2fsck -fn of the mount's image after the bench exited ${fsck.status}:\n${fsck.stdout}`)
  } finally {
    await ganesha?.stop()
    if (mounted) spawnSync(process.execPath, [CLI, 'umount', mnt], { stdio: 'ignore' })
    await rpcbind.stop()
    fs.rmSync(base, { recursive: true, force: true })
  }
}

main().catch((e) => {
  process.stderr.write(`bench:nfs: ${(e as Error).message}\n`)
  process.exit(1)
})
