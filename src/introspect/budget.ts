// What one scan may cost (issue 19): bytes read and objects visited, relative
// to what the image's files really hold on disk, so a hostile image (a
// superblock claiming 2^36 blocks, every group descriptor naming one inode
// table) ends with "too costly to introspect" instead of taking the daemon's
// memory and event loop. A scan past its budget throws TooCostlyError: the
// image is served as data (a pass-through), like any IntrospectError.

import { setImmediate as yieldLoop } from 'timers/promises'
import { UnsupportedError, type ErrorContext } from './errors'
import { formatSize } from '../size'

/** Bytes a scan may always read, whatever the file (a small image's file system is read whole). */
export const BUDGET_FLOOR_BYTES = 256 << 20
/** Bytes read allowed per byte the image's files hold on disk (a legitimate scan reads meta-data once). */
export const BUDGET_BYTES_PER_FILE_BYTE = 2
/** Objects (group descriptors, inode slots, mapping blocks, map runs) a scan may always visit. */
export const BUDGET_FLOOR_OBJECTS = 2_000_000
/** One object allowed per this many bytes held on disk (the smallest on-disk object, a 32-byte descriptor). */
export const BUDGET_FILE_BYTES_PER_OBJECT = 32
/** RAM a scan's working set takes per object (runs, typed arrays, inode targets), for the memory ceiling; measured ≈ 60–100. */
export const BYTES_PER_OBJECT = 100
/** Work between two yields of the event loop (ms): other images' I/O and the control socket answer in between. */
const SLICE_MS = 5

export class TooCostlyError extends UnsupportedError {
  constructor(message: string, context: ErrorContext = {}) {
    super(`too costly to introspect: ${message}; served as data`, context)
    this.name = 'TooCostlyError'
  }
}

export interface BudgetLimits {
  maxBytes: number
  maxObjects: number
  /** What the limit is relative to, for the message ("a 1.3 MiB file"). */
  basis: string
}

/** The limits for an image whose files hold `fileBytes` on disk (st_blocks), capped by `memoryLeft` bytes of the daemon's introspection ceiling. */
export function budgetFor(fileBytes: number, memoryLeft = Infinity): BudgetLimits {
  const maxBytes = BUDGET_FLOOR_BYTES + BUDGET_BYTES_PER_FILE_BYTE * fileBytes
  let maxObjects = BUDGET_FLOOR_OBJECTS + Math.floor(fileBytes / BUDGET_FILE_BYTES_PER_OBJECT)
  let basis = `files holding ${formatSize(fileBytes)}`
  const byMemory = Math.floor(memoryLeft / BYTES_PER_OBJECT)
  if (byMemory < maxObjects) {
    maxObjects = Math.max(0, byMemory)
    basis += ` and ${formatSize(Math.max(0, memoryLeft))} left under the introspection memory ceiling (--introspect-memory)`
  }
  return { maxBytes, maxObjects, basis }
}

/** One scan's running totals; shared by every volume of one image (1,024 partitions naming one file system cost one budget). */
export class ScanBudget {
  bytes = 0
  objects = 0
  private last = Date.now()
  constructor(
    readonly limits: BudgetLimits,
    private readonly context: ErrorContext = {},
  ) {}

  /** Unbounded (tests, tools that read a known-good image). */
  static unlimited(): ScanBudget {
    return new ScanBudget({ maxBytes: Infinity, maxObjects: Infinity, basis: 'no limit' })
  }

  /** Would reading `n` more bytes for `what` pass the budget? Throws before the read is made. */
  read(n: number, what: string): void {
    this.bytes += n
    if (this.bytes > this.limits.maxBytes) {
      throw new TooCostlyError(`${what} would bring the bytes read to ${formatSize(this.bytes)}, over the scan budget of ${formatSize(this.limits.maxBytes)} (${this.limits.basis})`, this.context)
    }
  }

  /** `n` more objects for `what` (counted before they are built). */
  visit(n: number, what: string): void {
    this.objects += n
    if (this.objects > this.limits.maxObjects) {
      throw new TooCostlyError(`${what} would bring the objects visited to ${this.objects}, over the scan budget of ${this.limits.maxObjects} (${this.limits.basis})`, this.context)
    }
  }

  /** Working-set bytes this scan is accounted for (the memory ceiling's view). */
  get memoryBytes(): number {
    return this.objects * BYTES_PER_OBJECT
  }

  /** Yields to the event loop once every few ms of work: call it in every long loop. */
  async tick(): Promise<void> {
    const now = Date.now()
    if (now - this.last < SLICE_MS) return
    await yieldLoop()
    this.last = Date.now()
  }
}
