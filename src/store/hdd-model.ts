// A service-time model of one rotating disk, for emulating the paper's 5400 RPM
// laptop HDD under the real image files (DESIGN.md, "Performance model"). Pure
// and deterministic given its seeded RNG: time is the caller's (ms, any
// origin), nothing here reads a clock or does I/O (hdd-device.ts does).
//
// What is modelled, per request, in arrival order on one actuator:
//   - seek: Ruemmler & Wilkes 1994 ("An introduction to disk drive modeling",
//     IEEE Computer 27(3)): a + b·√d for d < boundary, c + e·d beyond, d the
//     distance in cylinders; byte offsets map to cylinders linearly
//     (offset / capacity · cylinders; no zones, no spare areas);
//   - rotational latency: uniform over one revolution from the injected RNG,
//     except a continuation (the request starts where the head is), which
//     waits for that sector to come round again: nothing if the request was
//     already queued when the previous one finished (the drive had the
//     command in advance, its overhead overlapping the previous transfer),
//     otherwise the rest of the revolution it missed while idle;
//   - transfer at one media rate (the sustained rate; inner/outer zones are
//     not distinguished) and a fixed command overhead;
//   - the drive's segmented read-ahead cache, time-honest: after a read from
//     the media the head goes on reading the following sectors into that
//     read's segment at the media rate, while no other request needs the
//     actuator, up to a segment's worth past the read's start. Read-ahead data
//     exists only once the media has delivered it: a read inside a segment
//     costs overhead + interface transfer, but a read inside the segment still
//     being filled waits for the fill to reach its end (still counted a cache
//     hit: no positioning). A read in the filling segment while its
//     read-ahead still runs pushes the read-ahead on to a segment's worth past
//     the read's start (sequential streams keep streaming); the segment is a
//     ring holding the last segment's worth. A read-ahead that reached its
//     limit has stopped: reading on past it is a media read (a continuation).
//     The next request that needs the media stops the read-ahead (the data
//     delivered so far stays cached). A read starting in a cached segment and
//     running past it reads only the rest from the media. LRU over segments.
//   - writes go to the media (write-through: no write-back cache, as with the
//     drive's write cache off) and drop every cached segment they overlap.
// Not modelled: command reordering (NCQ), zoned media rates, track/head
// switch times, write settle, retries, power management.

export interface HddProfile {
  name: string
  capacityBytes: number
  cylinders: number
  rpm: number
  /** Ruemmler & Wilkes seek curve: ms = a + b·√d below boundary (cylinders), c + e·d from it; 0 for d = 0. */
  seek: { a: number; b: number; boundary: number; c: number; e: number }
  /** Sustained media transfer rate, bytes per second. */
  mediaBytesPerSec: number
  /** Host interface rate for data served from the drive's cache, bytes per second. */
  interfaceBytesPerSec: number
  /** Fixed per-command overhead (controller, command processing), ms. */
  overheadMs: number
  cacheBytes: number
  cacheSegments: number
}

/**
 * A 5400 RPM 2.5" laptop drive of the WD Scorpio Blue WD3200BEVT / Seagate
 * Momentus 5400 class: 320 GB, 8 MiB cache, SATA 3 Gb/s. These are
 * datasheet-class figures (what such drives' product sheets state), not
 * measurements of a particular drive:
 *   - 5400 RPM: 11.11 ms per revolution, 5.56 ms average rotational latency;
 *   - seek: 2 ms track-to-track, 12 ms average (read), 22 ms full stroke;
 *   - ~60 MB/s sustained media rate; 8 MiB cache; 300 MB/s interface.
 * Cylinders: 60 MB/s over 11.11 ms is ~667 kB per track; 320 GB over 4
 * surfaces (2 platters) of such tracks is 120,000 cylinders.
 * Seek constants: the Ruemmler & Wilkes shape with its boundary at 20% of the
 * stroke (as in their HP 97560 fit, 383 of 1962 cylinders), a, b, c, e solved
 * so that seek(1) = 2 ms, seek(full stroke) = 22 ms, the curve is continuous
 * at the boundary and its mean over uniformly random start and end cylinders
 * (the datasheet "average seek") is 12 ms.
 * Command overhead 0.5 ms and 16 cache segments are assumptions of typical
 * magnitude, not datasheet figures.
 */
export const LAPTOP_5400: HddProfile = {
  name: '5400 RPM 2.5" laptop HDD (datasheet-class)',
  capacityBytes: 320e9,
  cylinders: 120_000,
  rpm: 5400,
  seek: { a: 1.944, b: 0.05639, boundary: 24_000, c: 7.85, e: 1.1792e-4 },
  mediaBytesPerSec: 60e6,
  interfaceBytesPerSec: 300e6,
  overheadMs: 0.5,
  cacheBytes: 8 * 2 ** 20,
  cacheSegments: 16,
}

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export interface ServiceResult {
  /** Service time: completion minus the moment the actuator took the request (queueing excluded). */
  ms: number
  /** Time spent queued behind earlier requests. */
  waitMs: number
  startMs: number
  /** Completion time on the caller's clock. */
  doneMs: number
  seekCylinders: number
  seekMs: number
  rotationMs: number
  /** Served from the drive's cache (possibly waiting for read-ahead to deliver it), no positioning. */
  cacheHit: boolean
}

export interface HddStats {
  requests: number
  reads: number
  writes: number
  cacheHits: number
  /** Requests that moved the actuator to another cylinder. */
  seeks: number
  seekCylinders: number
  seekBytes: number
  /** Sum of service times (the actuator/command busy time, read-ahead in the background excluded). */
  busyMs: number
  /** Sum of queueing delays. */
  waitMs: number
  bytesRead: number
  bytesWritten: number
}

interface Segment {
  /** Cached bytes [start, end) (the filling segment: [start, fill now)). */
  start: number
  end: number
  /** Read-ahead target (the filling segment only; = end otherwise). */
  limit: number
  /** Fill: position anchorPos was reached at anchorTime, then media rate up to limit. */
  anchorPos: number
  anchorTime: number
  used: number
}

export class HddModel {
  readonly profile: HddProfile
  readonly revolutionMs: number
  readonly segmentBytes: number
  readonly stats: HddStats = {
    requests: 0,
    reads: 0,
    writes: 0,
    cacheHits: 0,
    seeks: 0,
    seekCylinders: 0,
    seekBytes: 0,
    busyMs: 0,
    waitMs: 0,
    bytesRead: 0,
    bytesWritten: 0,
  }
  private readonly rng: () => number
  private readonly mediaPerMs: number
  private readonly ifacePerMs: number
  private busyUntil = 0
  private lastArrival = -Infinity
  /** The head was over byte headPos at headTime (the rotational phase reference). */
  private headPos = 0
  private headTime = 0
  private readonly segments: (Segment | null)[]
  private filling: Segment | null = null
  private tick = 0
  private nextRegion = 0
  /** Regions handed out by regionOf, by file key. */
  private readonly regions = new Map<string, number>()

  constructor(profile: HddProfile = LAPTOP_5400, rng: () => number = mulberry32(1)) {
    this.profile = profile
    this.rng = rng
    this.revolutionMs = 60_000 / profile.rpm
    this.segmentBytes = Math.floor(profile.cacheBytes / Math.max(1, profile.cacheSegments))
    this.mediaPerMs = profile.mediaBytesPerSec / 1000
    this.ifacePerMs = profile.interfaceBytesPerSec / 1000
    this.segments = new Array<Segment | null>(Math.max(0, profile.cacheSegments)).fill(null)
  }

  /** Cylinder of a byte offset on the emulated disk (linear, clamped to the last cylinder). */
  cylinderOf(offset: number): number {
    const p = this.profile
    const c = Math.floor((offset / p.capacityBytes) * p.cylinders)
    return Math.min(p.cylinders - 1, Math.max(0, c))
  }

  seekTimeMs(cylinders: number): number {
    const d = Math.abs(cylinders)
    if (d === 0) return 0
    const s = this.profile.seek
    return d < s.boundary ? s.a + s.b * Math.sqrt(d) : s.c + s.e * d
  }

  /** When the actuator is next free, on the caller's clock. */
  get busyUntilMs(): number {
    return this.busyUntil
  }

  get headCylinder(): number {
    return this.cylinderOf(this.headPos)
  }

  /**
   * A region of the emulated disk for one file: files are laid out from the
   * start of the disk in order of reservation, each rounded up to a GiB and
   * followed by a 1 GiB gap (standing for whatever else lives on the disk).
   * Returns the region's base byte offset.
   */
  reserve(bytes: number): number {
    const GiB = 2 ** 30
    const base = this.nextRegion
    this.nextRegion += Math.max(1, Math.ceil(Math.max(0, bytes) / GiB)) * GiB + GiB
    return base
  }

  /**
   * The region of one file, however many times and by whom it is opened: the
   * first call reserves it (`bytes`: its size then), later calls with the same
   * key (any stable name of the file: device and inode) get the same base.
   */
  regionOf(file: string, bytes: number): number {
    let base = this.regions.get(file)
    if (base === undefined) this.regions.set(file, (base = this.reserve(bytes)))
    return base
  }

  /**
   * One request; requests must be given in arrival order (an arrival earlier
   * than the previous one is taken as simultaneous with it). Without an
   * arrival time the request arrives when the actuator is next free
   * (back-to-back, queue depth one).
   */
  service(offset: number, length: number, isWrite: boolean, arrivalTimeMs?: number): ServiceResult {
    const p = this.profile
    const arrival = Math.max(arrivalTimeMs ?? this.busyUntil, this.lastArrival)
    this.lastArrival = arrival
    const queued = arrival < this.busyUntil
    const start = Math.max(arrival, this.busyUntil)
    const off = Math.max(0, offset)
    const len = Math.max(0, length)
    const end = off + len
    const st = this.stats
    st.requests++
    if (isWrite) {
      st.writes++
      st.bytesWritten += len
    } else {
      st.reads++
      st.bytesRead += len
    }

    let done: number
    let cacheHit = false
    let seekCylinders = 0
    let seekMs = 0
    let rotationMs = 0

    const hit = len === 0 ? start + p.overheadMs : isWrite ? null : this.cacheRead(off, end, start)
    if (hit !== null) {
      cacheHit = true
      done = hit
      st.cacheHits++
    } else {
      this.stopReadAhead(start)
      let from = off
      let prefix: Segment | null = null
      if (!isWrite) {
        for (const s of this.segments) {
          if (s && s.start <= off && off < s.end) {
            prefix = s
            from = s.end
            break
          }
        }
      }
      const toCyl = this.cylinderOf(from)
      seekCylinders = Math.abs(toCyl - this.cylinderOf(this.headPos))
      let mediaStart: number
      if (from === this.headPos) {
        // Continuation: the sector under the head comes round once per revolution.
        const ready = start + (queued ? 0 : p.overheadMs)
        mediaStart = this.nextPass(this.headTime, ready)
        rotationMs = mediaStart - ready
      } else {
        seekMs = this.seekTimeMs(seekCylinders)
        rotationMs = this.rng() * this.revolutionMs
        mediaStart = start + p.overheadMs + seekMs + rotationMs
      }
      if (seekCylinders > 0) st.seeks++
      st.seekCylinders += seekCylinders
      st.seekBytes += Math.abs(from - this.headPos)
      done = mediaStart + (end - from) / this.mediaPerMs
      this.headPos = end
      this.headTime = done
      if (isWrite) this.invalidate(off, end)
      else this.startReadAhead(prefix, off, end, done)
    }

    this.busyUntil = done
    const ms = done - start
    st.busyMs += ms
    st.waitMs += start - arrival
    return { ms, waitMs: start - arrival, startMs: start, doneMs: done, seekCylinders, seekMs, rotationMs, cacheHit }
  }

  /** Earliest time >= t at which the platter is in the phase it had at ref. */
  private nextPass(ref: number, t: number): number {
    const k = Math.ceil((t - ref) / this.revolutionMs - 1e-9)
    return ref + k * this.revolutionMs
  }

  private fillAt(s: Segment, t: number): number {
    return Math.min(s.limit, s.anchorPos + Math.max(0, t - s.anchorTime) * this.mediaPerMs)
  }

  private fillTime(s: Segment, pos: number): number {
    return pos <= s.anchorPos ? -Infinity : s.anchorTime + (pos - s.anchorPos) / this.mediaPerMs
  }

  /** Completion time of a read served from the cache, or null on a miss. */
  private cacheRead(off: number, end: number, start: number): number | null {
    const p = this.profile
    const f = this.filling
    if (f) {
      const fill = this.fillAt(f, start)
      const held = Math.max(f.start, fill - this.segmentBytes)
      // While the read-ahead runs, a read from its held data up to its limit
      // is (or will be) in the cache and pushes the limit on; once it has
      // stopped at its limit only what it delivered is (reading on past it is
      // a media read, below).
      const running = fill < f.limit
      if (held <= off && (running ? off <= f.limit && end <= p.capacityBytes : end <= fill)) {
        if (running) f.limit = Math.max(f.limit, Math.min(p.capacityBytes, Math.max(off + this.segmentBytes, end)))
        f.start = held
        f.used = ++this.tick
        const ready = this.fillTime(f, end)
        return Math.max(start + p.overheadMs, ready) + (end - off) / this.ifacePerMs
      }
    }
    for (const s of this.segments) {
      if (s && s !== f && s.start <= off && end <= s.end) {
        s.used = ++this.tick
        return start + p.overheadMs + (end - off) / this.ifacePerMs
      }
    }
    return null
  }

  /** The actuator is needed elsewhere at t: the read-ahead stops where the media has got to. */
  private stopReadAhead(t: number): void {
    const f = this.filling
    if (!f) return
    const fill = this.fillAt(f, t)
    if (fill <= f.anchorPos) {
      this.headPos = f.anchorPos
      this.headTime = f.anchorTime
    } else if (fill >= f.limit) {
      this.headPos = f.limit
      this.headTime = this.fillTime(f, f.limit)
    } else {
      this.headPos = fill
      this.headTime = t
    }
    f.end = fill
    f.start = Math.max(f.start, fill - this.segmentBytes)
    f.limit = fill
    this.filling = null
  }

  private startReadAhead(prefix: Segment | null, off: number, end: number, done: number): void {
    let s = prefix
    if (!s) {
      let victim = -1
      for (let i = 0; i < this.segments.length; i++) {
        const c = this.segments[i]
        if (!c) {
          victim = i
          break
        }
        if (victim < 0 || c.used < this.segments[victim]!.used) victim = i
      }
      if (victim < 0) return // no cache
      s = { start: off, end, limit: end, anchorPos: end, anchorTime: done, used: 0 }
      this.segments[victim] = s
    }
    s.end = end
    s.start = Math.max(s.start, end - this.segmentBytes)
    s.limit = Math.min(this.profile.capacityBytes, Math.max(end, off + this.segmentBytes))
    s.anchorPos = end
    s.anchorTime = done
    s.used = ++this.tick
    this.filling = s
  }

  private invalidate(off: number, end: number): void {
    for (let i = 0; i < this.segments.length; i++) {
      const s = this.segments[i]
      if (s && s.start < end && off < s.end) {
        this.segments[i] = null
        if (this.filling === s) this.filling = null
      }
    }
  }
}
