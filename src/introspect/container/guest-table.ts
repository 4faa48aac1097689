// Guest → file mapping runs of one container layer in typed arrays (27 bytes a
// run, contiguous grains merge into one run), sorted by guest offset, with a
// reverse index sorted by (file, file offset) kept alongside (4 bytes a run).
// Unmapped guest space is "unallocated": the disk decides whether that reads
// as zeros or from the parent.

export const enum RunKind {
  Data = 0,
  /** Allocated as zeros (qcow2 zero clusters): reads zeros, never the parent. */
  Zero = 1,
  /** One compressed grain/cluster; its stored length lives in `storedLen`. */
  Compressed = 2,
}

export interface TableRun {
  guest: number
  length: number
  file: number
  fileOffset: number
  kind: RunKind
}

export class GuestTable {
  private guest = new Float64Array(16)
  private fileOff = new Float64Array(16)
  private len = new Float64Array(16)
  private fileIdx = new Uint16Array(16)
  private kinds = new Uint8Array(16)
  /** Run indices sorted by (file, fileOffset); only Data and Compressed runs. */
  private rev = new Uint32Array(16)
  private nrev = 0
  private n = 0
  /** Stored (compressed) length by guest offset of the run: compressed runs are rare and read-only. */
  private readonly storedLen = new Map<number, number>()
  private allocated = 0

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
      this.storedLen.size * 16
    )
  }

  /**
   * Bulk load: add runs in any order, then call finish(). Contiguous runs
   * (guest and file both continuing, same kind) merge.
   */
  private pending: TableRun[] = []
  private pendingStored: [number, number][] = []

  add(guest: number, length: number, file: number, fileOffset: number, kind: RunKind = RunKind.Data, storedLength = 0): void {
    if (length <= 0) return
    const last = this.pending[this.pending.length - 1]
    if (
      kind !== RunKind.Compressed &&
      last &&
      last.kind === kind &&
      last.file === file &&
      last.guest + last.length === guest &&
      (kind === RunKind.Zero || last.fileOffset + last.length === fileOffset)
    ) {
      last.length += length
      return
    }
    this.pending.push({ guest, length, file, fileOffset, kind })
    if (kind === RunKind.Compressed) this.pendingStored.push([guest, storedLength])
  }

  finish(): void {
    const p = this.pending
    this.pending = []
    p.sort((a, b) => a.guest - b.guest)
    const merged: TableRun[] = []
    for (const r of p) {
      const last = merged[merged.length - 1]
      if (last && last.guest + last.length > r.guest) {
        throw new Error(`guest range ${r.guest}+${r.length} is mapped twice`)
      }
      if (
        last &&
        r.kind !== RunKind.Compressed &&
        last.kind === r.kind &&
        last.file === r.file &&
        last.guest + last.length === r.guest &&
        (r.kind === RunKind.Zero || last.fileOffset + last.length === r.fileOffset)
      ) {
        last.length += r.length
      } else merged.push({ ...r })
    }
    for (const [g, s] of this.pendingStored) this.storedLen.set(g, s)
    this.pendingStored = []
    if (this.n === 0) {
      // The open-time bulk load: fill the arrays in one pass, sort the reverse index once.
      this.reserve(merged.length)
      const revList: number[] = []
      merged.forEach((r, i) => {
        this.guest[i] = r.guest
        this.fileOff[i] = r.fileOffset
        this.len[i] = r.length
        this.fileIdx[i] = r.file
        this.kinds[i] = r.kind
        if (r.kind !== RunKind.Zero) {
          this.allocated += r.length
          revList.push(i)
        }
      })
      this.n = merged.length
      revList.sort((a, b) => this.fileIdx[a] - this.fileIdx[b] || this.fileOff[a] - this.fileOff[b])
      this.rev.set(revList)
      this.nrev = revList.length
    } else {
      for (const r of merged) this.insertRun(r)
    }
    this.shrink()
  }

  private reserve(cap: number): void {
    if (cap <= this.guest.length) return
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
    const r = new Uint32Array(cap)
    r.set(this.rev.subarray(0, this.nrev))
    this.rev = r
  }

  private shrink(): void {
    const cap = Math.max(this.n, 16)
    if (this.guest.length === cap) return
    this.guest = this.guest.slice(0, cap)
    this.fileOff = this.fileOff.slice(0, cap)
    this.len = this.len.slice(0, cap)
    this.fileIdx = this.fileIdx.slice(0, cap)
    this.kinds = this.kinds.slice(0, cap)
    this.rev = this.rev.slice(0, cap)
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
    return this.kinds[k] === RunKind.Compressed ? (this.storedLen.get(this.guest[k]) ?? 0) : this.len[k]
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

  private insertRun(r: TableRun): void {
    this.reserve(this.n + 1)
    const i = this.lower(r.guest)
    if (i < this.n && this.guest[i] < r.guest + r.length) throw new Error(`guest range ${r.guest}+${r.length} is mapped twice`)
    // Shift the run arrays and renumber reverse entries pointing at shifted runs.
    this.guest.copyWithin(i + 1, i, this.n)
    this.fileOff.copyWithin(i + 1, i, this.n)
    this.len.copyWithin(i + 1, i, this.n)
    this.fileIdx.copyWithin(i + 1, i, this.n)
    this.kinds.copyWithin(i + 1, i, this.n)
    for (let k = 0; k < this.nrev; k++) if (this.rev[k] >= i) this.rev[k]++
    this.guest[i] = r.guest
    this.fileOff[i] = r.fileOffset
    this.len[i] = r.length
    this.fileIdx[i] = r.file
    this.kinds[i] = r.kind
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
    if (this.kinds[i] === RunKind.Compressed) this.storedLen.delete(this.guest[i])
    this.guest.copyWithin(i, i + 1, this.n)
    this.fileOff.copyWithin(i, i + 1, this.n)
    this.len.copyWithin(i, i + 1, this.n)
    this.fileIdx.copyWithin(i, i + 1, this.n)
    this.kinds.copyWithin(i, i + 1, this.n)
    this.n--
    for (let k = 0; k < this.nrev; k++) if (this.rev[k] > i) this.rev[k]--
  }

  /**
   * Maps [guest, guest + length) afresh (an update from a written table
   * entry): whatever mapped it before is cut out; `mapping` null leaves it
   * unallocated. Neighbouring runs that now continue each other are not
   * merged back (a few extra runs after updates are harmless).
   */
  remap(guest: number, length: number, mapping: { file: number; fileOffset: number; kind: RunKind; storedLength?: number } | null): void {
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
    if (mapping) {
      if (mapping.kind === RunKind.Compressed) this.storedLen.set(guest, mapping.storedLength ?? 0)
      this.insertRun({ guest, length, file: mapping.file, fileOffset: mapping.fileOffset, kind: mapping.kind })
    }
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
          storedLength: this.storedLen.get(g) ?? 0,
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
          const stored = this.storedLen.get(this.guest[k]) ?? 0
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
