// npm run bench:containers — opening a 2 TiB-virtual monolithicSparse VMDK
// and a 2 TiB-virtual qcow2, each with 2 GiB allocated in 2,048 scattered
// 1 MiB extents (written with qemu-io, built once into .cache/bench), reads
// only headers and tables and builds the map in well under a second, with
// map memory ≤ 8 bytes per allocated grain/cluster (issue 3's targets).
// Prints one table; `--json` prints the rows instead.
//
// Cold: after dropping the page cache (root only; skipped otherwise). Warm:
// the same open again, files in the page cache. Both measured in this run.

import { execFileSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { openImage } from '../src/introspect/container'
import type { VirtualDisk } from '../src/introspect/container/types'
import { PROJECT_ROOT } from '../src/root'
import { formatSize } from '../src/size'

const DIR = path.join(PROJECT_ROOT, '.cache', 'bench', 'containers')
const VIRTUAL = 2 * 2 ** 40
const EXTENTS = 2048
const EXTENT = 1 << 20

/** The same scattered offsets for every image: 1 MiB-aligned, distinct, seeded. */
function offsets(): number[] {
  let x = 0x9e3779b9
  const slots = VIRTUAL / EXTENT
  const seen = new Set<number>()
  while (seen.size < EXTENTS) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    seen.add((x >>> 0) % slots)
  }
  return [...seen].map((s) => s * EXTENT)
}

function build(file: string, fmt: 'vmdk' | 'qcow2'): void {
  if (fs.existsSync(file)) return
  const tmp = `${file}.tmp`
  fs.rmSync(tmp, { force: true })
  const opts = fmt === 'vmdk' ? ['-o', 'subformat=monolithicSparse'] : ['-o', 'cluster_size=65536']
  execFileSync('qemu-img', ['create', '-q', '-f', fmt, ...opts, tmp, String(VIRTUAL)])
  const cmds = offsets()
    .map((o, i) => `write -q -P ${(i % 250) + 1} ${o} ${EXTENT}`)
    .join('\n')
  process.stderr.write(`building ${path.basename(file)} (2 GiB of scattered writes)...\n`)
  execFileSync('qemu-io', ['-f', fmt, tmp], { input: cmds + '\n', stdio: ['pipe', 'ignore', 'inherit'] })
  fs.renameSync(tmp, file)
}

function dropCaches(): boolean {
  try {
    execFileSync('sync')
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3')
    return true
  } catch {
    return false
  }
}

interface Row {
  image: string
  virtualBytes: number
  allocatedBytes: number
  grainBytes: number
  coldMs: number | null
  warmMs: number
  bytesRead: number
  tableBytes: number
  mapBytes: number
  mapBytesPerGrain: number
}

async function timedOpen(file: string): Promise<{ ms: number; disk: VirtualDisk }> {
  const t0 = process.hrtime.bigint()
  const disk = await openImage(file)
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, disk }
}

async function measure(file: string, grainBytes: number): Promise<Row> {
  let coldMs: number | null = null
  if (dropCaches()) {
    const cold = await timedOpen(file)
    coldMs = cold.ms
    await cold.disk.close()
  }
  const { ms, disk } = await timedOpen(file)
  try {
    const grains = disk.allocatedBytes() / grainBytes
    return {
      image: path.basename(file),
      virtualBytes: disk.size,
      allocatedBytes: disk.allocatedBytes(),
      grainBytes,
      coldMs,
      warmMs: ms,
      bytesRead: disk.openBytesRead(),
      tableBytes: disk.regions().reduce((a, r) => a + r.length, 0),
      mapBytes: disk.mapBytes(),
      mapBytesPerGrain: disk.mapBytes() / grains,
    }
  } finally {
    await disk.close()
  }
}

const mib = (n: number) => (n / 2 ** 20).toFixed(1)

async function main(): Promise<void> {
  fs.mkdirSync(DIR, { recursive: true })
  const vmdk = path.join(DIR, 'sparse-2T.vmdk')
  const qcow2 = path.join(DIR, 'sparse-2T.qcow2')
  build(vmdk, 'vmdk')
  build(qcow2, 'qcow2')
  const rows = [await measure(vmdk, 65536), await measure(qcow2, 65536)]
  if (process.argv.includes('--json')) {
    process.stdout.write(JSON.stringify(rows, null, 2) + '\n')
    return
  }
  const lines = [
    '| image | virtual | allocated | open cold (ms) | open warm (ms) | read at open (MiB) | container meta-data (MiB) | map memory | bytes / allocated grain |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map(
      (r) =>
        `| ${r.image} | ${formatSize(r.virtualBytes, { unit: 'TiB', digits: 0 })} | ${formatSize(r.allocatedBytes, { unit: 'GiB', digits: 2 })} | ${
          r.coldMs === null ? 'n/a (not root)' : r.coldMs.toFixed(0)
        } | ${r.warmMs.toFixed(0)} | ${mib(r.bytesRead)} | ${mib(r.tableBytes)} | ${formatSize(r.mapBytes, { unit: 'KiB', digits: 0 })} | ${r.mapBytesPerGrain.toFixed(2)} |`,
    ),
  ]
  process.stdout.write(lines.join('\n') + '\n')
  process.stdout.write('targets: open well under 1 s, bytes read ≈ container meta-data, ≤ 8 bytes per allocated grain\n')
}

main().catch((e) => {
  process.stderr.write(`bench-containers: ${(e as Error).message}\n`)
  process.exit(1)
})
