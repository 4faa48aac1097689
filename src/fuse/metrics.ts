// `--metrics HOST:PORT`: the daemon's counters in the Prometheus text
// exposition format (version 0.0.4), served on GET /metrics. Hand-written: a
// scrape renders what `vmdi-fuse status` and `stats` already hold, nothing is
// counted twice. Names: vmdi_<what>[_<unit>][_total]; per image the label
// `image` is its path relative to the store.
import http from 'http'
import type { StatsAnswer, StatusAnswer } from '../control/protocol'
import type { ProgressStats } from '../placement/stats'
import { CliError } from '../errors'
import { LATENCY_BOUNDS, type Latency } from './ops'

/** What one scrape shows. */
export interface MetricsSnapshot {
  status: StatusAnswer
  stats: StatsAnswer
  /** FUSE op latencies answered in JavaScript, by op. */
  latency: Record<string, Latency>
  /** Bytes of the SSD store's files on disk (database and WAL), or null (none). */
  ssdFileBytes: number | null
}

type Labels = Record<string, string>

/** One metric family: HELP, TYPE, then its samples. */
class Family {
  readonly lines: string[] = []
  constructor(
    readonly name: string,
    readonly type: 'counter' | 'gauge' | 'histogram',
    readonly help: string,
  ) {}

  add(value: number, labels: Labels = {}, suffix = ''): this {
    const ls = Object.entries(labels)
    const l = ls.length ? `{${ls.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',')}}` : ''
    this.lines.push(`${this.name}${suffix}${l} ${formatValue(value)}`)
    return this
  }

  render(): string {
    return `# HELP ${this.name} ${this.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}\n# TYPE ${this.name} ${this.type}\n${this.lines.map((x) => x + '\n').join('')}`
  }
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN'
  if (v === Infinity) return '+Inf'
  if (v === -Infinity) return '-Inf'
  return String(v)
}

const PROGRESS_STATES: ProgressStats['state'][] = ['pending', 'running', 'done']
const SCAN_STATES = ['off', 'pending', 'running', 'done', 'failed']

/** The whole exposition of one snapshot. */
export function renderMetrics(m: MetricsSnapshot): string {
  const { status: st, stats } = m
  const fams: Family[] = []
  const fam = (name: string, type: Family['type'], help: string) => {
    const f = new Family(name, type, help)
    fams.push(f)
    return f
  }
  fam('vmdi_info', 'gauge', 'The daemon: version, store and mount point (value 1).').add(1, { version: st.version, store: st.store, mountpoint: st.mountpoint })
  fam('vmdi_open_files', 'gauge', 'Files open through the mount.').add(st.openFiles)
  fam('vmdi_fuse_in_flight', 'gauge', 'FUSE operations being answered in JavaScript now.').add(st.inFlight)
  const ops = fam('vmdi_fuse_ops_total', 'counter', 'FUSE operations answered in JavaScript, by op.')
  for (const [op, n] of Object.entries(st.ops)) ops.add(n, { op })
  const errs = fam('vmdi_fuse_op_errors_total', 'counter', 'FUSE operations answered with an error, by op.')
  for (const [op, n] of Object.entries(st.errors)) errs.add(n, { op })
  const lat = fam('vmdi_fuse_op_duration_seconds', 'histogram', 'Latency of FUSE operations answered in JavaScript, by op.')
  for (const [op, l] of Object.entries(m.latency)) {
    let cum = 0
    LATENCY_BOUNDS.forEach((b, i) => lat.add((cum += l.buckets[i]), { op, le: String(b) }, '_bucket'))
    cum += l.buckets[LATENCY_BOUNDS.length]
    lat.add(cum, { op, le: '+Inf' }, '_bucket')
    lat.add(l.sumSec, { op }, '_sum')
    lat.add(cum, { op }, '_count')
  }
  fam('vmdi_native_direct_reads_total', 'counter', 'Reads served on the FUSE threads by the native data path.').add(st.direct.reads)
  fam('vmdi_native_direct_writes_total', 'counter', 'Writes served on the FUSE threads by the native data path.').add(st.direct.writes)
  fam('vmdi_native_direct_read_bytes_total', 'counter', 'Bytes read by the native data path.').add(st.direct.readBytes)
  fam('vmdi_native_direct_write_bytes_total', 'counter', 'Bytes written by the native data path.').add(st.direct.writeBytes)
  const rn = st.ramNative
  fam('vmdi_native_ram_requests_total', 'counter', 'Image reads answered from the RAM tier on the FUSE threads.').add(rn?.requests ?? 0)
  fam('vmdi_native_ram_hits_total', 'counter', 'Blocks answered from the RAM tier on the FUSE threads.').add(rn?.hits ?? 0)
  fam('vmdi_native_ram_fallbacks_total', 'counter', 'Image reads the native RAM path sent to the datapath.').add(rn?.fallbacks ?? 0)
  fam('vmdi_process_resident_bytes', 'gauge', 'Resident memory of the daemon.').add(st.memory.rss)
  fam('vmdi_process_heap_used_bytes', 'gauge', 'JavaScript heap in use.').add(st.memory.heapUsed)
  fam('vmdi_process_external_bytes', 'gauge', 'Memory outside the JavaScript heap (buffers, the RAM tier).').add(st.memory.external)
  if (stats.hdd) {
    fam('vmdi_emulated_hdd_requests_total', 'counter', 'Requests to the emulated disk (--emulate-hdd).').add(stats.hdd.requests)
    fam('vmdi_emulated_hdd_busy_seconds_total', 'counter', 'Time the emulated disk was busy.').add(stats.hdd.busyMs / 1000)
  }
  if (stats.mode !== 'passthrough') {
    fam('vmdi_ram_cache_blocks', 'gauge', 'Blocks (4 KiB) the RAM tier holds.').add(stats.ram.blocks)
    fam('vmdi_ram_cache_capacity_blocks', 'gauge', 'Capacity of the RAM tier in 4 KiB blocks.').add(stats.ram.capacity)
    fam('vmdi_ram_cache_bytes', 'gauge', 'RAM reserved for the RAM tier.').add(stats.ram.bytes)
    fam('vmdi_ram_cache_hits_total', 'counter', 'RAM tier hits.').add(stats.ram.hits)
    fam('vmdi_ram_cache_misses_total', 'counter', 'RAM tier misses.').add(stats.ram.misses)
    fam('vmdi_ram_cache_evictions_total', 'counter', 'RAM tier evictions.').add(stats.ram.evictions)
    fam('vmdi_ssd_store_blocks', 'gauge', 'Blocks (4 KiB) the SSD store holds.').add(stats.ssd.heldBlocks)
    fam('vmdi_ssd_store_bytes', 'gauge', 'Bytes of blocks the SSD store holds.').add(stats.ssd.heldBlocks * 4096)
    fam('vmdi_ssd_store_cap_bytes', 'gauge', 'Cap of the SSD store (--ssd-max).').add(stats.ssd.capBlocks * 4096)
    fam('vmdi_ssd_store_dirty_blocks', 'gauge', 'Blocks the SSD store holds that the HDD files lack.').add(stats.ssd.dirtyBlocks)
    fam('vmdi_ssd_store_failed', 'gauge', '1 when the SSD store has failed (everything goes to the HDD).').add(stats.ssd.failed ? 1 : 0)
    if (m.ssdFileBytes !== null) fam('vmdi_ssd_store_file_bytes', 'gauge', "Bytes of the SSD store's files on disk (database and WAL).").add(m.ssdFileBytes)
    fam('vmdi_images_refused', 'gauge', 'Images refused (changed on the HDD while the SSD store held their blocks).').add(stats.refused.length)
    const perClass: [keyof (typeof stats.images)[number]['classes'][string], string, string][] = [
      ['reads', 'vmdi_image_read_blocks_total', 'Blocks read by the guest, per image and class.'],
      ['ramHits', 'vmdi_image_ram_hit_blocks_total', 'Blocks read from RAM, per image and class.'],
      ['ssdHits', 'vmdi_image_ssd_hit_blocks_total', 'Blocks read from the SSD store, per image and class.'],
      ['hddReads', 'vmdi_image_hdd_read_blocks_total', 'Blocks read from the HDD file, per image and class.'],
      ['writes', 'vmdi_image_write_blocks_total', 'Blocks written by the guest, per image and class.'],
      ['redirected', 'vmdi_image_redirected_blocks_total', 'Blocks written to the SSD store instead of the HDD, per image and class.'],
    ]
    for (const [key, name, help] of perClass) {
      const f = fam(name, 'counter', help)
      for (const im of stats.images) for (const [c, v] of Object.entries(im.classes)) f.add(v[key], { image: im.path, class: c })
    }
    const perImage: [string, 'counter' | 'gauge', string, (im: (typeof stats.images)[number]) => number][] = [
      ['vmdi_image_file_bytes', 'gauge', 'Size of the image file.', (im) => im.fileBytes],
      ['vmdi_image_dirty_blocks', 'gauge', 'Blocks of the image the SSD store holds that its HDD file lacks.', (im) => im.dirtyBlocks],
      ['vmdi_image_ssd_blocks', 'gauge', 'Blocks of the image the SSD store holds.', (im) => im.ssdBlocks],
      ['vmdi_image_ram_blocks', 'gauge', 'Blocks of the image the RAM tier holds.', (im) => im.ramBlocks],
      ['vmdi_image_ram_meta_blocks', 'gauge', 'Of those, blocks of meta-data priority (what --ram-floor keeps against other images).', (im) => im.ramMetaBlocks],
      ['vmdi_image_destaged_blocks_total', 'counter', 'Blocks written back to the HDD file.', (im) => im.destaged],
      ['vmdi_image_preloaded_blocks_total', 'counter', 'Blocks preloaded into the SSD store and RAM.', (im) => im.preloaded],
      ['vmdi_image_bypassed_blocks_total', 'counter', 'Blocks read or written around the SSD block cache by its sequential cutoff (--cache-mode block-cache).', (im) => im.bypassed],
      ['vmdi_image_evicted_blocks_total', 'counter', "Clean blocks the SSD block cache's LRU dropped to make room (--cache-mode block-cache).", (im) => im.evicted],
      ['vmdi_image_native_ram_hit_blocks_total', 'counter', 'Blocks of the image answered from RAM on the FUSE threads.', (im) => im.nativeRamHits],
      ['vmdi_image_native_data_reads_total', 'counter', 'Reads of the image served with pread on the FUSE threads (the native data path).', (im) => im.nativeReads],
      ['vmdi_image_native_data_writes_total', 'counter', 'Writes of the image served with pwrite on the FUSE threads (the native data path).', (im) => im.nativeWrites],
      ['vmdi_image_native_data_read_bytes_total', 'counter', 'Bytes of those reads.', (im) => im.nativeReadBytes],
      ['vmdi_image_native_data_written_bytes_total', 'counter', 'Bytes of those writes.', (im) => im.nativeWriteBytes],
      ['vmdi_image_scan_seconds', 'gauge', 'How long the last scan took (0 until done).', (im) => im.scan.ms / 1000],
    ]
    for (const [name, type, help, get] of perImage) {
      const f = fam(name, type, help)
      for (const im of stats.images) f.add(get(im), { image: im.path })
    }
    const scanState = fam('vmdi_image_scan_state', 'gauge', 'The scan state of each image (1 for the current one).')
    for (const im of stats.images) for (const s of SCAN_STATES) scanState.add(im.scan.state === s ? 1 : 0, { image: im.path, state: s })
    const jobState = fam('vmdi_image_job_state', 'gauge', 'State of the scan walk and the preload (1 for the current one).')
    const done = fam('vmdi_image_job_done_blocks', 'gauge', 'Blocks done by the scan walk and the preload sweeps.')
    const total = fam('vmdi_image_job_total_blocks', 'gauge', 'Blocks the scan walk and the preload sweeps have to do (known so far).')
    for (const im of stats.images) {
      for (const job of ['scan', 'preload'] as const) {
        const p = im.progress[job]
        for (const s of PROGRESS_STATES) jobState.add(p.state === s ? 1 : 0, { image: im.path, job, state: s })
        done.add(p.doneBlocks, { image: im.path, job })
        total.add(p.totalBlocks, { image: im.path, job })
      }
    }
  }
  return fams.map((f) => f.render()).join('')
}

/** `--metrics HOST:PORT` parsed; HOST defaults to 127.0.0.1 (`:9500` or `9500`). A bad value is a usage error. */
export function parseMetricsAddress(v: string): { host: string; port: number } {
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[^:\s]*):)?(\d+)$/.exec(v.trim())
  const port = m ? Number(m[2]) : NaN
  if (!m || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new CliError(`--metrics ${v}: expected HOST:PORT or PORT (a port from 1 to 65535; HOST defaults to 127.0.0.1)`, 2)
  }
  const host = (m[1] || '127.0.0.1').replace(/^\[|\]$/g, '')
  return { host, port }
}

/** Serves GET /metrics on host:port; a port in use (or any listen error) is a one-line CliError. */
export function serveMetrics(addr: { host: string; port: number }, snapshot: () => MetricsSnapshot): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '/').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('vmdi-fuse serves GET /metrics\n')
      return
    }
    try {
      const body = renderMetrics(snapshot())
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(body)
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(e as Error).message}\n`)
    }
  })
  return new Promise((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      const why = e.code === 'EADDRINUSE' ? 'the port is in use' : e.code === 'EADDRNOTAVAIL' ? 'no such local address' : e.message
      reject(new CliError(`--metrics ${addr.host}:${addr.port}: cannot listen (${why}); nothing is mounted`))
    })
    server.listen(addr.port, addr.host, () => {
      server.removeAllListeners('error')
      server.on('error', () => undefined)
      server.unref()
      resolve(server)
    })
  })
}
