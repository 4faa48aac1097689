// The one device contract every parser reads through (DESIGN.md): read(offset,
// length) resolves with exactly `length` bytes or rejects. Parsers run the same
// over a file, a Buffer, a virtual disk, or the mount's own block router.

import { promises as fsp } from 'fs'
import { sys } from '../native/sys'
import { IntrospectIOError } from './errors'

export interface Reader {
  /** Size in bytes of what this reader exposes. */
  readonly size: number
  /** A name for error messages (usually a path). */
  readonly name: string
  /** Exactly `length` bytes at `offset`, or throws (a read past `size` throws). */
  read(offset: number, length: number): Promise<Buffer>
}

export class BufferReader implements Reader {
  readonly size: number
  constructor(private readonly buf: Buffer, readonly name = 'buffer') {
    this.size = buf.length
  }
  async read(offset: number, length: number): Promise<Buffer> {
    checkRange(this, offset, length)
    return this.buf.subarray(offset, offset + length)
  }
}

/** A file opened read-only; counts the bytes and requests it serves (scans report them). */
export class FileReader implements Reader {
  bytesRead = 0
  reads = 0
  private constructor(private readonly fh: fsp.FileHandle, public size: number, readonly name: string) {}

  /** Re-reads the file's size (a container that grows while it is open). */
  async refresh(): Promise<number> {
    this.size = (await this.fh.stat()).size
    return this.size
  }

  static async open(path: string): Promise<FileReader> {
    const fh = await fsp.open(path, 'r')
    try {
      const st = await fh.stat()
      return new FileReader(fh, st.size, path)
    } catch (e) {
      await fh.close()
      throw e
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkRange(this, offset, length)
    const buf = Buffer.allocUnsafe(length)
    let done = 0
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, offset + done)
      if (bytesRead === 0) {
        throw new IntrospectIOError(`short read: wanted ${length} bytes, file ended after ${done}`, {
          file: this.name,
          offset,
        })
      }
      done += bytesRead
    }
    this.bytesRead += length
    this.reads++
    return buf
  }

  /**
   * The parts of [start, end) that hold data: holes read as zeros, so a parser
   * looking for non-zero table entries may skip them (qemu leaves the grain
   * tables of a sparse VMDK as holes until they are used).
   */
  async dataRanges(start: number, end: number): Promise<[number, number][]> {
    const r = sys().dataRanges(this.fh.fd, start, end, 1 << 20)
    if (typeof r === 'number') return [[start, end]] // no hole reporting here: all of it may hold data
    const out: [number, number][] = []
    for (let i = 0; i < r.length; i += 2) out.push([r[i], r[i + 1]])
    return out
  }

  async close(): Promise<void> {
    await this.fh.close()
  }
}

/** A window [start, start + size) of another reader: a partition, an LV, an extent. */
export class SliceReader implements Reader {
  constructor(
    private readonly inner: Reader,
    private readonly start: number,
    readonly size: number,
    readonly name = `${inner.name}[${start}+${size}]`,
  ) {}
  read(offset: number, length: number): Promise<Buffer> {
    checkRange(this, offset, length)
    return this.inner.read(this.start + offset, length)
  }
}

function checkRange(r: Reader, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > r.size) {
    throw new IntrospectIOError(`read of ${length} bytes at ${offset} is outside 0..${r.size}`, { file: r.name, offset })
  }
}
