// The few error families of introspection (STYLE.md habit 3). Only
// NotThisFormat is swallowed by a probe chain; the others reach the caller,
// which falls back to plain pass-through and logs the message.

export type IntrospectErrorCode = 'NOT_THIS_FORMAT' | 'CORRUPT' | 'UNSUPPORTED' | 'IO'

export interface ErrorContext {
  /** Path of the image (or extent / parent file) at fault. */
  file?: string
  /** Layer: 'vmdk', 'qcow2', 'mbr', 'gpt', 'lvm', 'ext4', ... */
  layer?: string
  /** Structure at fault: 'grain directory', 'L1 table', 'extent header', ... */
  structure?: string
  /** Byte offset of the structure in `file` (or in the virtual disk when said so). */
  offset?: number
  /** Object id: inode number, partition index, L1 index, ... */
  object?: string | number
}

export class IntrospectError extends Error {
  readonly code: IntrospectErrorCode
  readonly context: ErrorContext

  constructor(code: IntrospectErrorCode, message: string, context: ErrorContext = {}) {
    const where = [
      context.file,
      context.layer,
      context.structure,
      context.object !== undefined ? `#${context.object}` : undefined,
      context.offset !== undefined ? `@${context.offset}` : undefined,
    ]
      .filter((x) => x !== undefined)
      .join(' ')
    super(where ? `${where}: ${message}` : message)
    this.name = 'IntrospectError'
    this.code = code
    this.context = context
  }
}

export class NotThisFormatError extends IntrospectError {
  constructor(message: string, context: ErrorContext = {}) {
    super('NOT_THIS_FORMAT', message, context)
    this.name = 'NotThisFormatError'
  }
}

export class CorruptError extends IntrospectError {
  constructor(message: string, context: ErrorContext = {}) {
    super('CORRUPT', message, context)
    this.name = 'CorruptError'
  }
}

export class UnsupportedError extends IntrospectError {
  constructor(message: string, context: ErrorContext = {}) {
    super('UNSUPPORTED', message, context)
    this.name = 'UnsupportedError'
  }
}

export class IntrospectIOError extends IntrospectError {
  constructor(message: string, context: ErrorContext = {}) {
    super('IO', message, context)
    this.name = 'IntrospectIOError'
  }
}

/** 64-bit on-disk fields are read as bigint and converted here (STYLE.md habit 9). */
export function toSafeNumber(v: bigint, what: string, context: ErrorContext = {}): number {
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new CorruptError(`${what} ${v} is out of range`, context)
  }
  return Number(v)
}
