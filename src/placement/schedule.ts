// Background work shared fairly by every image of the mount (issue 18): scans
// run a few at once (they are short: every attached image's scan starts at
// once, up to MAX_SCANS); preloads are one queue of spans across images, taken
// by class priority (every image's meta-data before any image's small and boot
// files' data), images whose guest is doing I/O first. The small-file sweep
// reads only while its own guest pauses, and an image whose guest is busy
// never holds up another image's sweep. An image whose VM is starting (its
// `rush`, vm-start.ts) goes before all of that: its meta-data, then its boot
// files' data, whether its guest pauses or not.

import type { BlockRun } from './blocks'

/**
 * Scans running at once, mount-wide: enough that a boot storm's images all
 * start theirs at once (16 measured: the last scan starts ~4 s after its
 * attach with 4). Their memory is bounded anyway: maps by --introspect-memory,
 * what they keep for the preload by a total shared among them (scan.ts).
 */
export const MAX_SCANS = 32

/** A counting semaphore. */
export class Slots {
  private free: number
  private readonly waiting: (() => void)[] = []

  constructor(n: number) {
    this.free = n
    this.n = n
  }

  private readonly n: number

  /** Slots taken now. */
  get running(): number {
    return this.n - this.free
  }

  /** Runs fn when a slot is free; the slot is held until it settles. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--
    else await new Promise<void>((r) => this.waiting.push(r))
    try {
      return await fn()
    } finally {
      const next = this.waiting.shift()
      if (next) next()
      else this.free++
    }
  }
}

/** One image's preload, as the scheduler sees it. */
export interface PreloadJob {
  /** Meta-data spans still to read, then small and boot files' data spans (read only while the guest pauses). */
  meta: BlockRun[]
  small: BlockRun[]
  /** Boot files' data spans (read before `small`; the whole boot set of a starting VM before anything else). */
  boot?: BlockRun[]
  /** Its VM is starting: its meta-data and boot files first, ungated. */
  rush?: () => boolean
  /** Reads one span of the given phase. */
  read: (span: BlockRun, phase: 'meta' | 'small') => Promise<void>
  /** The image's last guest request (ms since the epoch). */
  lastGuestIo: () => number
  /** The job cannot go on (unmount, image gone, SSD store full or failed). */
  stopped: () => boolean
  /** Called once, when the job ends: whether it read every span. */
  done: (complete: boolean) => void
}

/** The mount's preload queue: one span at a time, fairly across images. */
export class PreloadScheduler {
  private readonly jobs: PreloadJob[] = []
  private running = false
  /** When each starting VM's job was last served (a boot storm's VMs take turns, span by span). */
  private readonly rushServed = new Map<PreloadJob, number>()
  private turns = 0

  constructor(private readonly idleMs: number) {}

  /** Queues an image's spans; resolves when they are read, or the job stopped (false). */
  submit(job: Omit<PreloadJob, 'done'>): Promise<boolean> {
    return new Promise((resolve) => {
      this.jobs.push({ ...job, done: resolve })
      if (!this.running) void this.loop()
    })
  }

  /** Images whose preload is queued or running. */
  get pending(): number {
    return this.jobs.length
  }

  private async loop(): Promise<void> {
    this.running = true
    try {
      for (;;) {
        for (let i = this.jobs.length - 1; i >= 0; i--) {
          const j = this.jobs[i]
          const finished = !j.meta.length && !j.small.length && !j.boot?.length
          if (finished || j.stopped()) {
            this.jobs.splice(i, 1)
            this.rushServed.delete(j)
            j.done(finished)
          }
        }
        if (!this.jobs.length) return
        // A starting VM's boot set first: its meta-data, then its boot files' data; several starting VMs take turns.
        let rushed: PreloadJob | null = null
        for (const j of this.jobs) {
          if (!j.rush?.() || (!j.meta.length && !j.boot?.length)) continue
          if (!rushed || (this.rushServed.get(j) ?? -1) < (this.rushServed.get(rushed) ?? -1)) rushed = j
        }
        if (rushed) {
          this.rushServed.set(rushed, this.turns++)
          if (rushed.meta.length) await rushed.read(rushed.meta.shift()!, 'meta')
          else await rushed.read(rushed.boot!.shift()!, 'small')
          continue
        }
        // Meta-data first, across every image; the busiest guest's first.
        const byActivity = [...this.jobs].sort((a, b) => b.lastGuestIo() - a.lastGuestIo())
        const meta = byActivity.find((j) => j.meta.length)
        if (meta) {
          await meta.read(meta.meta.shift()!, 'meta')
          continue
        }
        // Then small and boot files' data of an image whose guest pauses; the one idle longest first.
        const now = Date.now()
        const idle = byActivity.reverse().find((j) => now - j.lastGuestIo() >= this.idleMs && (j.boot?.length || j.small.length))
        if (idle) {
          await idle.read(idle.boot?.length ? idle.boot.shift()! : idle.small.shift()!, 'small')
          continue
        }
        await new Promise((r) => setTimeout(r, this.idleMs))
      }
    } finally {
      this.running = false
    }
  }
}
