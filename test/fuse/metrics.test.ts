// --metrics: the Prometheus exposition scraped from a real mount and every line
// checked by a strict parser; a port in use refuses the mount. Progress: status
// (--json and human, --watch) shows the scan's and preload's blocks done/total.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFileSync, spawn } from 'child_process'
import fs from 'fs'
import net from 'net'
import path from 'path'
import { CLI, runCli } from '../helpers/cli'
import { status, waitForImage } from '../helpers/control'
import { isMounted, mount, testDirs, tmpdir, type Mounted } from '../helpers/mount'

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped'])

interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

/** The text exposition format 0.0.4, strictly: throws naming the line at fault. */
function parseExposition(text: string): { types: Map<string, string>; samples: Sample[] } {
  expect(text.endsWith('\n')).toBe(true)
  const types = new Map<string, string>()
  const helped = new Set<string>()
  const samples: Sample[] = []
  const seen = new Set<string>()
  const lines = text.slice(0, -1).split('\n')
  lines.forEach((line, i) => {
    const at = `line ${i + 1}: ${line}`
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line)
      if (!m) throw new Error(`bad comment, ${at}`)
      if (!NAME.test(m[2])) throw new Error(`bad metric name, ${at}`)
      if (m[1] === 'TYPE') {
        if (!TYPES.has(m[3])) throw new Error(`bad type, ${at}`)
        if (types.has(m[2])) throw new Error(`second TYPE, ${at}`)
        types.set(m[2], m[3])
      } else {
        if (helped.has(m[2])) throw new Error(`second HELP, ${at}`)
        if (/\\[^\\n]/.test(m[3].replace(/\\\\/g, ''))) throw new Error(`bad escape in HELP, ${at}`)
        helped.add(m[2])
      }
      return
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line)
    if (!m) throw new Error(`bad sample, ${at}`)
    const labels: Record<string, string> = {}
    if (m[3] !== undefined && m[3] !== '') {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/y
      let pos = 0
      while (pos < m[3].length) {
        re.lastIndex = pos
        const l = re.exec(m[3])
        if (!l) throw new Error(`bad labels, ${at}`)
        if (Object.hasOwn(labels, l[1])) throw new Error(`repeated label, ${at}`)
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c))
        pos = re.lastIndex
        if (l[3] === '' && pos !== m[3].length) throw new Error(`bad labels, ${at}`)
      }
    }
    if (!/^(NaN|[+-]Inf|[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)$/.test(m[4])) throw new Error(`bad value, ${at}`)
    const value = m[4] === '+Inf' ? Infinity : m[4] === '-Inf' ? -Infinity : Number(m[4])
    const family = types.has(m[1]) ? m[1] : m[1].replace(/_(bucket|sum|count)$/, '')
    const type = types.get(family)
    if (!type) throw new Error(`sample before its TYPE, ${at}`)
    if (family !== m[1] && type !== 'histogram' && type !== 'summary') throw new Error(`suffix on a ${type}, ${at}`)
    if (type === 'counter' && !(value >= 0)) throw new Error(`negative counter, ${at}`)
    const key = `${m[1]}${JSON.stringify(Object.entries(labels).sort())}`
    if (seen.has(key)) throw new Error(`repeated series, ${at}`)
    seen.add(key)
    samples.push({ name: m[1], labels, value })
  })
  // Histograms: buckets cumulative, +Inf last and equal to _count.
  for (const [name, type] of types) {
    if (type !== 'histogram') continue
    const bySeries = new Map<string, Sample[]>()
    for (const s of samples.filter((x) => x.name === `${name}_bucket`)) {
      const { le, ...rest } = s.labels
      const k = JSON.stringify(Object.entries(rest).sort())
      bySeries.set(k, [...(bySeries.get(k) ?? []), s])
    }
    for (const [k, bs] of bySeries) {
      const les = bs.map((b) => (b.labels.le === '+Inf' ? Infinity : Number(b.labels.le)))
      for (let i = 1; i < bs.length; i++) {
        if (!(les[i] > les[i - 1]) || bs[i].value < bs[i - 1].value) throw new Error(`${name}${k}: buckets not cumulative`)
      }
      if (les[les.length - 1] !== Infinity) throw new Error(`${name}${k}: no +Inf bucket`)
      const count = samples.find((s) => s.name === `${name}_count` && JSON.stringify(Object.entries(s.labels).sort()) === k)
      if (count?.value !== bs[bs.length - 1].value) throw new Error(`${name}${k}: _count differs from the +Inf bucket`)
    }
  }
  return { types, samples }
}

function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port
      s.close(() => res(port))
    })
  })
}

describe('--metrics and progress', () => {
  const base = tmpdir('vmdi-metrics-')
  const d = testDirs(base, 'm')
  let port = 0
  let m: Mounted

  beforeAll(async () => {
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', path.join(d.store, 'vm "1".img'), '64M'])
    port = await freePort()
    m = await mount(d.store, d.mnt, ['--metrics', `127.0.0.1:${port}`, '--ssd', path.join(base, 'ssd', 'v.sqlite'), '--ram-cache', '64M'])
    fs.readFileSync(path.join(d.mnt, 'vm "1".img')).subarray(0, 4096) // attach it
    await waitForImage(d.mnt, (im) => im.scan.warm, { what: 'scan and preload of vm "1".img' })
  }, 120_000)

  afterAll(async () => {
    await m?.stop()
    fs.rmSync(base, { recursive: true, force: true })
  })

  it('serves an exposition every line of which parses, with the per-image, tier and FUSE families', async () => {
    const r = await fetch(`http://127.0.0.1:${port}/metrics`)
    expect(r.status).toBe(200)
    expect(r.headers.get('content-type')).toContain('version=0.0.4')
    const { types, samples } = parseExposition(await r.text())
    const get = (name: string, labels: Record<string, string> = {}) =>
      samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    for (const f of ['vmdi_fuse_ops_total', 'vmdi_ram_cache_blocks', 'vmdi_ssd_store_cap_bytes', 'vmdi_ssd_store_bytes', 'vmdi_native_direct_reads_total', 'vmdi_native_ram_hits_total', 'vmdi_process_resident_bytes', 'vmdi_image_dirty_blocks', 'vmdi_image_destaged_blocks_total', 'vmdi_image_redirected_blocks_total']) {
      expect(types.has(f), f).toBe(true)
    }
    expect(types.get('vmdi_fuse_op_duration_seconds')).toBe('histogram')
    expect(get('vmdi_fuse_op_duration_seconds_count', { op: 'getattr' })[0].value).toBeGreaterThan(0)
    expect(get('vmdi_fuse_ops_total', { op: 'open' })[0].value).toBeGreaterThan(0)
    // The label value with quotes and a space comes back as it was.
    const image = 'vm "1".img'
    expect(get('vmdi_image_read_blocks_total', { image, class: 'superblock' })[0].value).toBeGreaterThan(0)
    expect(get('vmdi_image_scan_state', { image, state: 'done' })[0].value).toBe(1)
    const done = get('vmdi_image_job_done_blocks', { image, job: 'scan' })[0].value
    expect(done).toBeGreaterThan(0)
    expect(get('vmdi_image_job_total_blocks', { image, job: 'scan' })[0].value).toBe(done)
    expect(get('vmdi_image_job_state', { image, job: 'preload', state: 'done' })[0].value).toBe(1)
    expect(get('vmdi_ssd_store_cap_bytes')[0].value).toBeGreaterThan(0)
    expect(get('vmdi_ram_cache_bytes')[0].value).toBe(64 << 20)
    expect((await fetch(`http://127.0.0.1:${port}/other`)).status).toBe(404)
  })

  it('status shows the scan and preload progress (--json, human, --watch)', async () => {
    const st = status(d.mnt)
    const im = st.images.find((x) => x.path === 'vm "1".img')!
    expect(im.scan).toBe('done')
    expect(im.progress.scan.state).toBe('done')
    expect(im.progress.scan.totalBlocks).toBeGreaterThan(0)
    expect(im.progress.scan.doneBlocks).toBe(im.progress.scan.totalBlocks)
    expect(im.progress.scan.etaSec).toBe(0)
    expect(im.progress.preload.state).toBe('done')
    const human = runCli(['status', d.mnt])
    expect(human.status).toBe(0)
    expect(human.stdout).toMatch(new RegExp(`scan +done ${im.progress.scan.doneBlocks}/${im.progress.scan.totalBlocks} blocks \\(100%\\)`))
    expect(human.stdout).toMatch(/preload +done \d+\/\d+ blocks/)
    // --watch: a fresh document every second until interrupted.
    const w = spawn(process.execPath, [CLI, 'status', '--watch', '--json', d.mnt], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    w.stdout.on('data', (b) => (out += b))
    const t0 = Date.now()
    while (out.split('\n').filter(Boolean).length < 3 && Date.now() - t0 < 15_000) await new Promise((r) => setTimeout(r, 100))
    w.kill('SIGINT')
    const docs = out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { pid: number })
    expect(docs.length).toBeGreaterThanOrEqual(3)
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1900)
    expect(new Set(docs.map((x) => x.pid)).size).toBe(1)
  })

  it('a metrics port in use is a one-line error and nothing is mounted', async () => {
    const busy = net.createServer()
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r))
    const p = (busy.address() as net.AddressInfo).port
    const d2 = testDirs(base, 'busy')
    fs.mkdirSync(d2.mnt)
    try {
      const r = runCli(['--metrics', `127.0.0.1:${p}`, '--ssd', path.join(base, 'ssd2', 'v.sqlite'), d2.store, d2.mnt], { env: { ...process.env, VMDI_STATE_DIR: path.join(base, 'state2') } })
      expect(r.status).not.toBe(0)
      expect(r.stderr.trim().split('\n')).toEqual([`vmdi-fuse: --metrics 127.0.0.1:${p}: cannot listen (the port is in use); nothing is mounted`])
      expect(isMounted(d2.mnt)).toBe(false)
      const bad = runCli(['--metrics', 'localhost:99999', d2.store, d2.mnt])
      expect(bad.status).toBe(2)
      expect(bad.stderr).toMatch(/^vmdi-fuse: --metrics localhost:99999: expected HOST:PORT/)
    } finally {
      busy.close()
    }
  })
})
