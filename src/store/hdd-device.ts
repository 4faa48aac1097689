// An image file behind an emulated rotating disk: every pread/pwrite does the
// real I/O on the file descriptor and completes no earlier than the HddModel
// says the disk would have (DESIGN.md, "Performance model"): completion at
// max(real completion, model completion), the request arriving at the model
// at the wall-clock moment it is issued.
//
// One disk, one actuator: several EmulatedHdd (several image files on the same
// disk) share one HddModel, passed in. Each file gets its own region of the
// emulated disk, its byte offsets shifted by a base offset: by default the
// file's region on the model (model.regionOf, keyed by device and inode), laid
// out from the start of the disk in order of first use, each region its size
// then (fstat, or sizeHint) rounded up to a GiB plus a 1 GiB gap. Every
// device on the same file gets the same region, whoever builds it (the
// pass-through's handles, the datapath's attach, an image attached again after
// it changed): one file, one place on the disk. A file growing past its region
// just runs into the gap and then the next file's region (only positions are
// modelled, nothing is stored there).
//
// Granularity: the wait is a setTimeout of the remaining time rounded to whole
// ms (none if that rounds to 0), so a completion lands within about ±0.5 ms of
// the model's time plus however late the event loop runs the timer. The
// model's clock is not affected by that: queued requests are timed from the
// model's own completion times, so the error does not accumulate across a
// queue; only a client that waits for each completion before issuing the next
// request sees its arrivals shifted by it.

import fs from 'fs'
import { performance } from 'perf_hooks'
import { setTimeout as sleep } from 'timers/promises'
import { promisify } from 'util'
import { FileDevice, plainDevice } from './device'
import type { HddModel, HddStats, ServiceResult } from './hdd-model'

const read = promisify(fs.read)
const write = promisify(fs.write)

export interface EmulatedHddOptions {
  /** Byte offset of the file's start on the emulated disk (default: the file's region, model.regionOf). */
  baseOffset?: number
  /** Size used to reserve the file's region when it has none yet (default: the file's size now). */
  sizeHint?: number
  /** Wall clock in ms (default performance.now); tests may inject one. */
  now?: () => number
}

export interface EmulatedHddStats {
  reads: number
  writes: number
  bytesRead: number
  bytesWritten: number
  cacheHits: number
  /** Sum of the time completions were held back past the real I/O's completion. */
  delayedMs: number
}

export class EmulatedHdd extends FileDevice {
  readonly model: HddModel
  readonly baseOffset: number
  readonly stats: EmulatedHddStats = { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, cacheHits: 0, delayedMs: 0 }
  private readonly now: () => number

  /** fd stays the caller's: EmulatedHdd never closes it. */
  constructor(fd: number, model: HddModel, opts: EmulatedHddOptions = {}) {
    super(fd)
    this.model = model
    this.now = opts.now ?? (() => performance.now())
    if (opts.baseOffset !== undefined) this.baseOffset = opts.baseOffset
    else {
      const st = fs.fstatSync(fd)
      this.baseOffset = model.regionOf(`${st.dev}:${st.ino}`, opts.sizeHint ?? st.size)
    }
  }

  /** The shared disk's counters (all files on the model). */
  get diskStats(): HddStats {
    return this.model.stats
  }

  /** Reads len bytes at file position pos into buf at off; resolves to the bytes read. */
  override async pread(buf: Buffer, off: number, len: number, pos: number): Promise<number> {
    const r = this.model.service(this.baseOffset + pos, len, false, this.now())
    const { bytesRead: n } = await read(this.fd, buf, off, len, pos)
    this.stats.reads++
    this.stats.bytesRead += n
    await this.settle(r)
    return n
  }

  /** Writes len bytes of buf from off at file position pos; resolves to the bytes written. */
  override async pwrite(buf: Buffer, off: number, len: number, pos: number): Promise<number> {
    const r = this.model.service(this.baseOffset + pos, len, true, this.now())
    const { bytesWritten: n } = await write(this.fd, buf, off, len, pos)
    this.stats.writes++
    this.stats.bytesWritten += n
    await this.settle(r)
    return n
  }

  private async settle(r: ServiceResult): Promise<void> {
    if (r.cacheHit) this.stats.cacheHits++
    const remaining = r.doneMs - this.now()
    const delay = Math.round(remaining)
    if (delay < 1) return
    this.stats.delayedMs += remaining
    await sleep(delay)
  }
}

/**
 * The HDD file device of an open image file: the plain file, or with a model
 * the file behind that emulated disk (--emulate-hdd), at its region of the disk
 * (opts.baseOffset to place it elsewhere). The one way the mount builds them.
 */
export function hddDevice(fd: number, model: HddModel | null | undefined, opts: EmulatedHddOptions = {}): FileDevice {
  return model ? new EmulatedHdd(fd, model, opts) : plainDevice(fd)
}
