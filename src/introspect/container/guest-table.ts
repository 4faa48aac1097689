// Guest → file mapping runs of one container layer in typed arrays, sorted by
// guest offset, with a reverse index sorted by (file, file offset) kept
// alongside. Contiguous grains merge into one run; runs that cannot merge
// (a fragmented image) cost 31 bytes each (guest, file offset, length: 8 each;
// file 2; kind 1; reverse index 4), 35 when the layer has compressed runs
// (their stored length, 4) — nothing per run outside the typed arrays, at open
// or after. Unmapped guest space is "unallocated": the disk decides whether
// that reads as zeros or from the parent.
//
// Bounds (issue 19): a layer maps at most max(MIN_RUNS, file bytes /
// FILE_BYTES_PER_RUN) runs (`setLimit`), and no byte of a file is stored data
// of two guest ranges (`finish` checks it): tables that all name one cluster or
// grain are refused before they cost memory.

import { TooCostlyError } from '../budget'
import { CorruptError, type ErrorContext } from '../errors'

export const enum RunKind {
  Data = 0,
  /** Allocated as zeros (qcow2 zero clusters): reads zeros, never the parent. */
  Zero = 1,
  /** One compressed grain/cluster; its stored length lives in `stored`. */
  Compressed = 2,
}

/** Runs a layer may always map (2 MiB of table). */
export const MIN_RUNS = 65536
/** Above MIN_RUNS: one run per this many bytes of the layer's files (a legitimate run needs a grain or cluster, or an 8-byte table entry and its neighbour). */
export const FILE_BYTES_PER_RUN = 16
/** Bytes a run takes in the table (without compressed runs; 4 more with). */
export const BYTES_PER_RUN = 31

/** The bound on the runs of a layer whose files hold `fileBytes` bytes. */
export function maxRunsFor(fileBytes: number): number {
  return Math.max(MIN_RUNS, Math.floor(fileBytes / FILE_BYTES_PER_RUN))
}

export interface TableRun {
  guest: number
  length: number
  file: number
  fileOffset: number
  kind: RunKind
}

/** A mapping for `remap` and `matches`. */
export interface RunMapping {
  file: number
  fileOffset: number
  kind: RunKind
  storedLength?: number
}

/**
 * Indices 0..n-1 ordered by `key(i)` (non-negative safe integers), stable: an
 * LSD radix sort on 16-bit digits, skipping digits all keys share. O(n) per
 * pass where a comparator sort of 16M indices took 25 s.
 */
function radixOrder(n: number, key: (i: number) => number, order?: Uint32Array): Uint32Array {
  let a: Uint32Array = order as Uint32Array
  if (!order) {
    a = new Uint32Array(n)
    for (let i = 0; i < n; i++) a[i] = i
  }
  let b: Uint32Array = new Uint32Array(n)
  const count = new Uint32Array(65537)
  // Digits: low 32 bits in two 16-bit halves, then the high 21 bits in two.
  const digit = [
    (x: number) => x & 0xffff,
    (x: number) => (x >>> 16) & 0xffff,
    (x: number) => Math.floor(x / 4294967296) & 0xffff,
    (x: number) => Math.floor(x / 281474976710656) & 0xffff,
  ]
  for (const d of digit) {
    count.fill(0)
    for (let i = 0; i < n; i++) count[d(key(a[i])) + 1]++
    if (n === 0 || count[d(key(a[0])) + 1] === n) continue
    for (let k = 1; k <= 65536; k++) count[k] += count[k - 1]
    for (let i = 0; i < n; i++) b[count[d(key(a[i]))]++] = a[i]
    const t = a
    a = b
    b = t
  }
  return a
}

export class GuestTable {
  private guest = new Float64Array(16)
  private fileOff = new Float64Array(16)
  private len = new Float64Array(16)
  private fileIdx = new Uint16Array(16)
  private kinds = new Uint8Array(16)
  /** Stored (compressed) length of each run; allocated with the first compressed run. */
  private stored: Uint32Array | null = null
  /** Run indices sorted by (file, fileOffset); only Data and Compressed runs. */
  private rev: Uint32Array = new Uint32Array(16)
  private nrev = 0
  private n = 0
  private allocated = 0
  /** Runs were added out of guest order since the last finish. */
  private unsorted = false
  private maxRuns = Infinity
  private limitWhat = ''
  private limitContext: ErrorContext = {}
  private limitBasis = ''

  get runCount(): number {
    return this.n
  }

  allocatedBytes(): number {
    return this.allocated
  }

  memoryBytes(): number {
    return (
      this.guest.byteLength +
      this.fileOff.byteLength +
      this.len.byteLength +
      this.fileIdx.byteLength +
      this.kinds.byteLength +
      this.rev.byteLength +
      (this.stored?.byteLength ?? 0)
    )
  }

  /**
   * Refuse (TooCostlyError) to map more than `maxRuns` runs at open;
   * `what` names the structure ("qcow2 L2 tables") and the basis of the bound.
   */
  setLimit(maxRuns: number, what: string, context: ErrorContext = {}, basis = ''): void {
    this.limitBasis = basis
    this.maxRuns = maxRuns
    this.limitWhat = what
    this.limitContext = context
  }

  /**
   * Bulk load: add runs in any order, then call finish(). Runs continuing
   * the last one added (guest and file both, same kind) merge at once; the
   * rest merge in finish.
   */
  add(guest: number, length: number, file: number, fileOffset: number, kind: RunKind = RunKind.Data, storedLength = 0): void {
    if (length <= 0) return
    const l = this.n - 1
    if (l >= 0) {
      const end = this.guest[l] + this.len[l]
      if (
        kind !== RunKind.Compressed &&
        this.kinds[l] === kind &&
        this.fileIdx[l] === file &&
        end === guest &&
        (kind === RunKind.Zero || this.fileOff[l] + this.len[l] === fileOffset)
      ) {
        this.len[l] += length
        return
      }
      if (guest < end) this.unsorted = true
    }
    if (this.n >= this.maxRuns) {
      throw new TooCostlyError(`${this.limitWhat} map more than ${this.maxRuns} runs that do not merge (${BYTES_PER_RUN} bytes each${this.limitBasis ? `; ${this.limitBasis}` : ''})`, this.limitContext)
    }
    this.reserve(this.n + 1)
    const i = this.n++
    this.guest[i] = guest
    this.fileOff[i] = fileOffset
    this.len[i] = length
    this.fileIdx[i] = file
    this.kinds[i] = kind
    if (kind === RunKind.Compressed) this.storedArray()[i] = storedLength
  }

  private storedArray(): Uint32Array {
    if (!this.stored || this.stored.length < this.guest.length) {
      const s = new Uint32Array(this.guest.length)
      if (this.stored) s.set(this.stored.subarray(0, Math.min(this.n, this.stored.length)))
      this.stored = s
    }
    return this.stored
  }

  /** Sorts and merges what add() appended, checks it, and rebuilds the reverse index. */
  finish(): void {
    const n = this.n
    if (this.unsorted) {
      const order = radixOrder(n, (i) => this.guest[i])
      const permute = <T extends Float64Array | Uint16Array | Uint8Array | Uint32Array>(a: T): T => {
        const b = a.slice(0, Math.max(n, 16)) as T
        for (let k = 0; k < n; k++) b[k] = a[order[k]]
        return b
      }
      this.guest = permute(this.guest)
      this.fileOff = permute(this.fileOff)
      this.len = permute(this.len)
      this.fileIdx = permute(this.fileIdx)
      this.kinds = permute(this.kinds)
      if (this.stored) this.stored = permute(this.stored)
      this.unsorted = false
    }
    // Merge neighbours in place; a guest byte mapped twice is corrupt.
    let w = 0
    for (let r = 0; r < n; r++) {
      if (w > 0) {
        const l = w - 1
        const end = this.guest[l] + this.len[l]
        if (end > this.guest[r]) throw new CorruptError(`guest range ${this.guest[r]}+${this.len[r]} is mapped twice`, this.limitContext)
        const k = this.kinds[r]
        if (
          k !== RunKind.Compressed &&
          this.kinds[l] === k &&
          this.fileIdx[l] === this.fileIdx[r] &&
          end === this.guest[r] &&
          (k === RunKind.Zero || this.fileOff[l] + this.len[l] === this.fileOff[r])
        ) {
          this.len[l] += this.len[r]
          continue
        }
      }
      if (w !== r) {
        this.guest[w] = this.guest[r]
        this.fileOff[w] = this.fileOff[r]
        this.len[w] = this.len[r]
        this.fileIdx[w] = this.fileIdx[r]
        this.kinds[w] = this.kinds[r]
        if (this.stored) this.stored[w] = this.stored[r]
      }
      w++
    }
    this.n = w
    this.allocated = 0
    let nrev = 0
    for (let i = 0; i < w; i++) if (this.kinds[i] !== RunKind.Zero) nrev++
    let revList: Uint32Array = new Uint32Array(nrev)
    nrev = 0
    for (let i = 0; i < w; i++) {
      if (this.kinds[i] === RunKind.Zero) continue
      this.allocated += this.len[i]
      revList[nrev++] = i
    }
    revList = radixOrder(nrev, (i) => this.fileOff[i], revList)
    revList = radixOrder(nrev, (i) => this.fileIdx[i], revList)
    this.rev = revList
    this.nrev = nrev
    this.checkFileOverlap()
    this.shrink()
  }

  /**
   * No byte of a file is the stored data of two guest ranges, and no two
   * compressed runs start at one byte (their stored bytes may share a sector):
   * a table naming one cluster or grain many times is corrupt, not a map.
   */
  private checkFileOverlap(): void {
    for (let j = 1; j < this.nrev; j++) {
      const a = this.rev[j - 1]
      const b = this.rev[j]
      if (this.fileIdx[a] !== this.fileIdx[b]) continue
      const aEnd = this.kinds[a] === RunKind.Compressed ? this.fileOff[a] + 1 : this.fileOff[a] + this.len[a]
      if (this.kinds[b] === RunKind.Compressed && this.kinds[a] === RunKind.Compressed ? this.fileOff[b] < aEnd : this.kinds[b] === RunKind.Data && this.fileOff[b] < aEnd) {
        throw new CorruptError(
          `file bytes at ${this.fileOff[b]} are stored data of guest offsets ${this.guest[a]} and ${this.guest[b]}: ${this.limitWhat || 'the tables'} name one cluster or grain twice`,
          this.limitContext,
        )
      }
    }
  }

  private reserve(need: number): void {
    if (need <= this.guest.length) return
    // Double, but not past the limit (a refused image stops growing there).
    const cap = Math.max(need, Math.min(this.guest.length * 2, Number.isFinite(this.maxRuns) ? Math.max(this.maxRuns, need) : Infinity))
    const grow = <T extends Float64Array | Uint16Array | Uint8Array | Uint32Array>(a: T, mk: (n: number) => T): T => {
      const b = mk(cap)
      b.set(a.subarray(0, this.n) as never)
      return b
    }
    this.guest = grow(this.guest, (k) => new Float64Array(k))
    this.fileOff = grow(this.fileOff, (k) => new Float64Array(k))
    this.len = grow(this.len, (k) => new Float64Array(k))
    this.fileIdx = grow(this.fileIdx, (k) => new Uint16Array(k))
    this.kinds = grow(this.kinds, (k) => new Uint8Array(k))
    if (this.stored) this.stored = grow(this.stored, (k) => new Uint32Array(k))
    const r = new Uint32Array(cap)
    r.set(this.rev.subarray(0, this.nrev))
    this.rev = r
  }

  private shrink(): void {
    const cap = Math.max(this.n, 16)
    if (this.guest.length === cap && this.rev.length === cap) return
    this.guest = this.guest.slice(0, cap)
    this.fileOff = this.fileOff.slice(0, cap)
    this.len = this.len.slice(0, cap)
    this.fileIdx = this.fileIdx.slice(0, cap)
    this.kinds = this.kinds.slice(0, cap)
    if (this.stored) this.stored = this.stored.slice(0, cap)
    const r = new Uint32Array(cap)
    r.set(this.rev.subarray(0, this.nrev))
    this.rev = r
  }

  /** Index of the first run whose end is > offset. */
  private lower(offset: number): number {
    let lo = 0
    let hi = this.n
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.guest[mid] + this.len[mid] <= offset) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /** Bytes run k occupies in its file. */
  private fileLen(k: number): number {
    return this.kinds[k] === RunKind.Compressed ? (this.stored?.[k] ?? 0) : this.len[k]
  }

  /** Position in `rev` where a run at (file, fileOffset) belongs. */
  private revLower(file: number, fileOffset: number): number {
    let lo = 0
    let hi = this.nrev
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      const k = this.rev[mid]
      const f = this.fileIdx[k]
      if (f < file || (f === file && this.fileOff[k] + this.fileLen(k) <= fileOffset)) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  private insertRun(r: TableRun, storedLength = 0): void {
    this.reserve(this.n + 1)
    const i = this.lower(r.guest)
    if (i < this.n && this.guest[i] < r.guest + r.length) throw new Error(`guest range ${r.guest}+${r.length} is mapped twice`)
    // Shift the run arrays and renumber reverse entries pointing at shifted runs.
    this.guest.copyWithin(i + 1, i, this.n)
    this.fileOff.copyWithin(i + 1, i, this.n)
    this.len.copyWithin(i + 1, i, this.n)
    this.fileIdx.copyWithin(i + 1, i, this.n)
    this.kinds.copyWithin(i + 1, i, this.n)
    if (this.stored) this.stored.copyWithin(i + 1, i, this.n)
    for (let k = 0; k < this.nrev; k++) if (this.rev[k] >= i) this.rev[k]++
    this.guest[i] = r.guest
    this.fileOff[i] = r.fileOffset
    this.len[i] = r.length
    this.fileIdx[i] = r.file
    this.kinds[i] = r.kind
    if (r.kind === RunKind.Compressed || this.stored) this.storedArray()[i] = r.kind === RunKind.Compressed ? storedLength : 0
    this.n++
    if (r.kind !== RunKind.Zero) {
      this.allocated += r.length
      const j = this.revLower(r.file, r.fileOffset)
      this.rev.copyWithin(j + 1, j, this.nrev)
      this.rev[j] = i
      this.nrev++
    }
  }

  private removeRun(i: number): void {
    if (this.kinds[i] !== RunKind.Zero) {
      this.allocated -= this.len[i]
      let j = 0
      while (this.rev[j] !== i) j++
      this.rev.copyWithin(j, j + 1, this.nrev)
      this.nrev--
    }
    this.guest.copyWithin(i, i + 1, this.n)
    this.fileOff.copyWithin(i, i + 1, this.n)
    this.len.copyWithin(i, i + 1, this.n)
    this.fileIdx.copyWithin(i, i + 1, this.n)
    this.kinds.copyWithin(i, i + 1, this.n)
    if (this.stored) this.stored.copyWithin(i, i + 1, this.n)
    this.n--
    for (let k = 0; k < this.nrev; k++) if (this.rev[k] > i) this.rev[k]--
  }

  /**
   * Whether [guest, guest + length) is mapped exactly as `mapping` says
   * already (null: unallocated throughout), so a rewritten table entry that
   * did not change costs a lookup, not a remap.
   */
  matches(guest: number, length: number, mapping: RunMapping | null): boolean {
    const i = this.lower(guest)
    const end = guest + length
    if (!mapping) return i >= this.n || this.guest[i] >= end
    if (i >= this.n || this.guest[i] > guest || this.guest[i] + this.len[i] < end) return false
    const k = this.kinds[i]
    if (k !== mapping.kind || this.fileIdx[i] !== mapping.file) return false
    if (k === RunKind.Zero) return true
    if (k === RunKind.Compressed) {
      return this.guest[i] === guest && this.len[i] === length && this.fileOff[i] === mapping.fileOffset && (this.stored?.[i] ?? 0) === (mapping.storedLength ?? 0)
    }
    return this.fileOff[i] + (guest - this.guest[i]) === mapping.fileOffset
  }

  /**
   * Maps [guest, guest + length) afresh (an update from a written table
   * entry): whatever mapped it before is cut out; `mapping` null leaves it
   * unallocated. Neighbouring runs that now continue each other are not
   * merged back (a few extra runs after updates are harmless).
   */
  remap(guest: number, length: number, mapping: RunMapping | null): void {
    const end = guest + length
    for (;;) {
      const i = this.lower(guest)
      if (i >= this.n || this.guest[i] >= end) break
      const s = this.guest[i]
      const e = s + this.len[i]
      const f = this.fileIdx[i]
      const fo = this.fileOff[i]
      const k = this.kinds[i] as RunKind
      if (k === RunKind.Compressed && (s < guest || e > end)) {
        throw new Error(`remap of ${guest}+${length} would split the compressed grain at ${s}`)
      }
      this.removeRun(i)
      if (s < guest) this.insertRun({ guest: s, length: guest - s, file: f, fileOffset: fo, kind: k })
      if (e > end) this.insertRun({ guest: end, length: e - end, file: f, fileOffset: k === RunKind.Data ? fo + (end - s) : fo, kind: k })
    }
    if (mapping) this.insertRun({ guest, length, file: mapping.file, fileOffset: mapping.fileOffset, kind: mapping.kind }, mapping.storedLength ?? 0)
  }

  /** The run containing `offset`, or the gap up to the next run (`run` null, `length` to it or Infinity). */
  lookup(offset: number): { run: (TableRun & { storedLength: number }) | null; length: number; grainStart: number } {
    const i = this.lower(offset)
    if (i < this.n && this.guest[i] <= offset) {
      const g = this.guest[i]
      return {
        run: {
          guest: g,
          length: this.len[i],
          file: this.fileIdx[i],
          fileOffset: this.fileOff[i],
          kind: this.kinds[i] as RunKind,
          storedLength: this.kinds[i] === RunKind.Compressed ? (this.stored?.[i] ?? 0) : 0,
        },
        length: g + this.len[i] - offset,
        grainStart: g,
      }
    }
    return { run: null, length: i < this.n ? this.guest[i] - offset : Infinity, grainStart: offset }
  }

  /** Reverse lookup: the data/compressed run holding byte `fileOffset` of `file` (`length` file bytes of it left, `guestLength` guest bytes in the whole run), or the gap to the next one. */
  reverse(file: number, fileOffset: number): { guest: number; length: number; kind: RunKind; guestLength: number } | { guest: null; length: number } {
    const j = this.revLower(file, fileOffset)
    if (j < this.nrev) {
      const k = this.rev[j]
      if (this.fileIdx[k] === file && this.fileOff[k] <= fileOffset) {
        const kind = this.kinds[k] as RunKind
        if (kind === RunKind.Compressed) {
          const stored = this.stored?.[k] ?? 0
          if (fileOffset < this.fileOff[k] + stored) {
            return { guest: this.guest[k], length: this.fileOff[k] + stored - fileOffset, kind, guestLength: this.len[k] }
          }
          return { guest: null, length: 1 }
        }
        if (fileOffset < this.fileOff[k] + this.len[k]) {
          return { guest: this.guest[k] + (fileOffset - this.fileOff[k]), length: this.fileOff[k] + this.len[k] - fileOffset, kind, guestLength: this.len[k] }
        }
      }
      if (this.fileIdx[k] === file) return { guest: null, length: this.fileOff[k] - fileOffset }
    }
    return { guest: null, length: Infinity }
  }

  *runs(): IterableIterator<TableRun> {
    for (let i = 0; i < this.n; i++) {
      yield { guest: this.guest[i], length: this.len[i], file: this.fileIdx[i], fileOffset: this.fileOff[i], kind: this.kinds[i] as RunKind }
    }
  }
}
