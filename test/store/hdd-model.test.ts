// The emulated 5400 RPM disk: the model's computed times (never the wall
// clock) for random and sequential reads, read-ahead hits and their
// invalidation by writes, the seek curve and the single actuator's queue; and
// EmulatedHdd over real temp files (bytes right, counters moving).
import crypto from 'crypto'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EmulatedHdd } from '../../src/store/hdd-device'
import { HddModel, LAPTOP_5400, mulberry32 } from '../../src/store/hdd-model'

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB
const P = LAPTOP_5400

function model(seed = 1): HddModel {
  return new HddModel(P, mulberry32(seed))
}

describe('HddModel (LAPTOP_5400)', () => {
  it('random 4 KiB reads over a 64 GiB span: 50-80 per second of modelled time', () => {
    const m = model(42)
    const pick = mulberry32(7)
    const n = 4000
    const t0 = m.busyUntilMs
    for (let i = 0; i < n; i++) {
      const off = Math.floor(pick() * ((64 * GiB) / 4096)) * 4096
      m.service(off, 4096, false)
    }
    const iops = n / ((m.busyUntilMs - t0) / 1000)
    console.log(`random 4 KiB reads over 64 GiB: ${iops.toFixed(1)} IOPS, ${m.stats.cacheHits} cache hits`)
    expect(iops).toBeGreaterThanOrEqual(50)
    expect(iops).toBeLessThanOrEqual(80)
    expect(m.stats.requests).toBe(n)
    expect(m.stats.cacheHits).toBeLessThan(n * 0.01)
  })

  it('long sequential reads (256 MiB in 128 KiB requests) run at about the media rate', () => {
    for (const queued of [false, true]) {
      const m = model(3)
      const base = 10 * GiB
      const t0 = m.busyUntilMs
      for (let off = 0; off < 256 * MiB; off += 128 * KiB) m.service(base + off, 128 * KiB, false, queued ? 0 : undefined)
      const mbps = (256 * MiB) / ((m.busyUntilMs - t0) / 1000) / 1e6
      console.log(`sequential 128 KiB reads${queued ? ' (all queued at t=0)' : ' (back-to-back)'}: ${mbps.toFixed(1)} MB/s, ${m.stats.cacheHits}/${m.stats.requests} cache hits`)
      expect(mbps).toBeGreaterThan((P.mediaBytesPerSec / 1e6) * 0.85)
      expect(mbps).toBeLessThan((P.mediaBytesPerSec / 1e6) * 1.15)
      expect(m.stats.cacheHits).toBeGreaterThan(m.stats.requests * 0.9)
    }
  })

  it('re-reads of read-ahead data cost only overhead + interface transfer; read-ahead not yet delivered is waited for', () => {
    const m = model()
    const x = 5 * GiB
    const first = m.service(x, 4096, false, 1000)
    expect(first.cacheHit).toBe(false)
    const hitCost = P.overheadMs + (4096 / P.interfaceBytesPerSec) * 1000
    // Long after: the read-ahead has filled the segment.
    const again = m.service(x, 4096, false, first.doneMs + 100)
    expect(again.cacheHit).toBe(true)
    expect(again.seekCylinders).toBe(0)
    expect(again.ms).toBeCloseTo(hitCost, 9)
    const ahead = m.service(x + 256 * KiB, 4096, false, again.doneMs + 1)
    expect(ahead.cacheHit).toBe(true)
    expect(ahead.ms).toBeCloseTo(hitCost, 9)

    // Right after a miss, data 400 KiB ahead is not there yet: the read waits for the media.
    const m2 = model()
    const a = m2.service(x, 4096, false, 1000)
    const b = m2.service(x + 400 * KiB, 4096, false, a.doneMs)
    expect(b.cacheHit).toBe(true)
    const delivered = a.doneMs + ((400 * KiB + 4096 - 4096) / P.mediaBytesPerSec) * 1000
    expect(b.doneMs).toBeCloseTo(delivered + (4096 / P.interfaceBytesPerSec) * 1000, 6)
    expect(b.ms).toBeGreaterThan(hitCost)
    // Past the read-ahead window (a segment from the read's start) is a miss.
    const c = m2.service(x + 2 * MiB, 4096, false, b.doneMs + 100)
    expect(c.cacheHit).toBe(false)

    // A read-ahead that stopped at its limit: what it read is cached, reading on
    // past it goes to the media from where the head stopped (no seek, at most a
    // revolution's wait).
    const m3 = model()
    const s0 = m3.service(x, 128 * KiB, false, 1000)
    const seg = m3.segmentBytes
    expect(m3.service(x + seg - 128 * KiB, 128 * KiB, false, s0.doneMs + 100).cacheHit).toBe(true)
    const on = m3.service(x + seg - 64 * KiB, 128 * KiB, false, m3.busyUntilMs + 100)
    expect(on.cacheHit).toBe(false)
    expect(on.seekCylinders).toBe(0)
    expect(on.seekMs).toBe(0)
    expect(on.rotationMs).toBeLessThan(m3.revolutionMs)
    expect(on.ms).toBeCloseTo(P.overheadMs + on.rotationMs + ((64 * KiB) / P.mediaBytesPerSec) * 1000, 6)
  })

  it('a write drops the cached range it overlaps, other segments stay', () => {
    const m = model()
    const a = 3 * GiB
    const b = 40 * GiB
    let t = 1000
    t = m.service(a, 4096, false, t).doneMs + 50
    t = m.service(b, 4096, false, t).doneMs + 50
    expect(m.service(a + 64 * KiB, 4096, false, t).cacheHit).toBe(true)
    const w = m.service(a + 128 * KiB, 4096, true, t + 50)
    expect(w.cacheHit).toBe(false)
    expect(m.service(a + 64 * KiB, 4096, false, w.doneMs + 50).cacheHit).toBe(false)
    const other = m.service(b + 64 * KiB, 4096, false, m.busyUntilMs + 50)
    expect(other.cacheHit).toBe(true)
    expect(m.stats.writes).toBe(1)
  })

  it('seek time grows with distance; random seeks average about the profile\'s 12 ms', () => {
    const m = model()
    let prev = 0
    for (let d = 1; d < P.cylinders; d += 97) {
      const s = m.seekTimeMs(d)
      expect(s).toBeGreaterThan(prev)
      prev = s
    }
    expect(m.seekTimeMs(0)).toBe(0)
    expect(m.seekTimeMs(1)).toBeCloseTo(2, 2)
    expect(m.seekTimeMs(P.cylinders - 1)).toBeCloseTo(22, 1)
    // Continuous at the boundary between the √d and the linear part.
    expect(m.seekTimeMs(P.seek.boundary)).toBeCloseTo(P.seek.a + P.seek.b * Math.sqrt(P.seek.boundary), 1)

    // Random reads over the whole disk: the seeks they make.
    const pick = mulberry32(11)
    let sum = 0
    let n = 0
    for (let i = 0; i < 4000; i++) {
      const r = m.service(Math.floor(pick() * (P.capacityBytes / 4096)) * 4096, 4096, false)
      if (r.seekCylinders > 0) {
        sum += r.seekMs
        n++
      }
    }
    const avg = sum / n
    console.log(`average random seek over the whole disk: ${avg.toFixed(2)} ms (${n} seeks); ${m.stats.seekCylinders} cylinders, ${(m.stats.seekBytes / 1e12).toFixed(2)} TB of seek distance`)
    expect(avg).toBeGreaterThan(12 * 0.8)
    expect(avg).toBeLessThan(12 * 1.2)
    expect(m.stats.seeks).toBe(n)
  })

  it('one actuator: requests arriving together are served one after the other', () => {
    const m = model()
    const r1 = m.service(1 * GiB, 64 * KiB, false, 500)
    const r2 = m.service(30 * GiB, 64 * KiB, false, 500)
    expect(r1.waitMs).toBe(0)
    expect(r2.startMs).toBe(r1.doneMs)
    expect(r2.waitMs).toBeCloseTo(r1.ms, 9)
    expect(r2.doneMs).toBeGreaterThan(r1.doneMs)
    expect(r2.seekCylinders).toBeGreaterThan(0)
    expect(m.stats.busyMs).toBeCloseTo(r1.ms + r2.ms, 9)
  })

  it('sequential writes: queued ones stream at the media rate, each issued after the last completed waits out a revolution', () => {
    const queued = model()
    for (let off = 0; off < 16 * MiB; off += 128 * KiB) queued.service(GiB + off, 128 * KiB, true, 0)
    const mbps = (16 * MiB) / (queued.busyUntilMs / 1000) / 1e6
    expect(mbps).toBeGreaterThan((P.mediaBytesPerSec / 1e6) * 0.85)

    const qd1 = model()
    let t = 0
    const rev = qd1.revolutionMs
    const first = qd1.service(GiB, 128 * KiB, true, t)
    t = first.doneMs + 0.2
    const next = qd1.service(GiB + 128 * KiB, 128 * KiB, true, t)
    expect(next.seekCylinders).toBe(0)
    expect(next.rotationMs).toBeCloseTo(rev - 0.2 - P.overheadMs, 6)
  })

  it('is deterministic given the seed', () => {
    const run = (seed: number) => {
      const m = model(seed)
      const pick = mulberry32(5)
      const out: number[] = []
      for (let i = 0; i < 200; i++) out.push(m.service(Math.floor(pick() * 1e6) * 4096, 4096, pick() < 0.3).ms)
      return out
    }
    expect(run(9)).toEqual(run(9))
    expect(run(9)).not.toEqual(run(10))
  })
})

describe('EmulatedHdd', () => {
  let dir = ''
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-hdd-'))
  })
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  it('two image files on one emulated disk: bytes read and written are right, the shared counters advance', async () => {
    const m = model()
    const content = [crypto.randomBytes(1 * MiB), crypto.randomBytes(1 * MiB)]
    const fds = content.map((c, i) => {
      const f = path.join(dir, `img${i}.raw`)
      fs.writeFileSync(f, c)
      return fs.openSync(f, 'r+')
    })
    try {
      const disks = fds.map((fd) => new EmulatedHdd(fd, m))
      expect(disks[0].baseOffset).toBe(0)
      expect(disks[1].baseOffset).toBe(2 * GiB)

      const buf = Buffer.alloc(64 * KiB)
      expect(await disks[0].pread(buf, 0, buf.length, 128 * KiB)).toBe(buf.length)
      expect(buf.equals(content[0].subarray(128 * KiB, 192 * KiB))).toBe(true)
      expect(await disks[1].pread(buf, 0, 4096, 4096)).toBe(4096)
      expect(buf.subarray(0, 4096).equals(content[1].subarray(4096, 8192))).toBe(true)

      const data = crypto.randomBytes(32 * KiB)
      const wbuf = Buffer.concat([Buffer.alloc(100), data])
      expect(await disks[1].pwrite(wbuf, 100, data.length, 512 * KiB)).toBe(data.length)
      data.copy(content[1], 512 * KiB)

      // Concurrent requests on both files queue on the one actuator.
      const bufs = [Buffer.alloc(MiB), Buffer.alloc(MiB)]
      await Promise.all(disks.map((d, i) => d.pread(bufs[i], 0, MiB, 0)))
      expect(bufs[0].equals(content[0])).toBe(true)
      expect(bufs[1].equals(content[1])).toBe(true)
      expect(fs.readFileSync(path.join(dir, 'img1.raw')).equals(content[1])).toBe(true)

      expect(m.stats.requests).toBe(5)
      expect(m.stats.reads).toBe(4)
      expect(m.stats.writes).toBe(1)
      expect(m.stats.bytesWritten).toBe(32 * KiB)
      expect(m.stats.seeks).toBeGreaterThanOrEqual(3)
      expect(m.stats.seekCylinders).toBeGreaterThan(0)
      expect(m.stats.busyMs).toBeGreaterThan(0)
      expect(disks[0].stats).toMatchObject({ reads: 2, writes: 0, bytesRead: 64 * KiB + MiB })
      expect(disks[1].stats).toMatchObject({ reads: 2, writes: 1, bytesRead: 4096 + MiB, bytesWritten: 32 * KiB })
      expect(disks[1].diskStats).toBe(m.stats)
    } finally {
      for (const fd of fds) fs.closeSync(fd)
    }
  })
})
