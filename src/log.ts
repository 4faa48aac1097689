// One logger for the daemon and the CLI: lines with an ISO time, a level and
// a message naming the object (image path, mount point) it is about.
export type Level = 'debug' | 'info' | 'warn' | 'error'
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 }

let threshold: Level = (process.env.VMDI_LOG_LEVEL as Level) in ORDER ? (process.env.VMDI_LOG_LEVEL as Level) : 'info'
let sink: (line: string) => void = (line) => process.stderr.write(line + '\n')

export function setLogLevel(level: Level): void {
  threshold = level
}

export function setLogSink(fn: (line: string) => void): void {
  sink = fn
}

function emit(level: Level, msg: string): void {
  if (ORDER[level] < ORDER[threshold]) return
  sink(`${new Date().toISOString()} ${level.padEnd(5)} ${msg}`)
}

export const log = {
  debug: (m: string) => emit('debug', m),
  info: (m: string) => emit('info', m),
  warn: (m: string) => emit('warn', m),
  error: (m: string) => emit('error', m),
}

/** Warnings a guest can repeat at will (one per write): how many are logged in full, and the summary period. */
export const REPEAT_FULL = 5
export const REPEAT_PERIOD_MS = 60_000

/**
 * Repeated warnings, rate-limited per subject (an image) and kind: the first
 * `full` of a burst in full, then one line per period with how many were left
 * out and the last of them. A period without any repeat ends the burst (the
 * next warning is logged in full again). Timers are unref'd: they never keep
 * the daemon alive.
 */
export class RepeatLimiter {
  private readonly bursts = new Map<string, { logged: number; dropped: number; last: string; timer: NodeJS.Timeout }>()

  constructor(
    private readonly out: (m: string) => void,
    private readonly full = REPEAT_FULL,
    private readonly periodMs = REPEAT_PERIOD_MS,
  ) {}

  warn(subject: string, kind: string, msg: string): void {
    const k = `${subject}\0${kind}`
    let b = this.bursts.get(k)
    if (!b) {
      const timer = setInterval(() => this.tick(k, subject, kind), this.periodMs)
      timer.unref()
      this.bursts.set(k, (b = { logged: 0, dropped: 0, last: '', timer }))
    }
    if (b.logged < this.full) {
      b.logged++
      this.out(b.logged === this.full ? `${msg} (further "${kind}" warnings of ${subject} are counted, one line a minute)` : msg)
      return
    }
    b.dropped++
    b.last = msg
  }

  private tick(k: string, subject: string, kind: string): void {
    const b = this.bursts.get(k)
    if (!b) return
    if (b.dropped === 0) {
      clearInterval(b.timer)
      this.bursts.delete(k)
      return
    }
    this.out(`${subject}: ${b.dropped} more "${kind}" warning(s) in the last ${Math.round(this.periodMs / 1000)} s, the last: ${b.last}`)
    b.dropped = 0
  }

  /** Bursts being counted (tests). */
  get size(): number {
    return this.bursts.size
  }
}

const repeats = new RepeatLimiter((m) => emit('warn', m))

/** A warning a guest can cause again and again (`subject`: e.g. "image vm1.img"; `kind`: what went wrong, without numbers). */
export function warnRepeated(subject: string, kind: string, msg: string): void {
  repeats.warn(subject, kind, msg)
}
