// Sizes on the command line: 512M, 4G, 1073741824 (binary multiples); and
// sizes for people, in the same binary units.

/** Bytes in a size such as 512M, 4G, 32K or 1073741824; throws naming `what` when it is not one. */
export function parseSize(v: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?$/i.exec(v.trim())
  if (!m) throw new Error(`${what} "${v}" is not a size: write e.g. 512M, 4G or 1073741824`)
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't']
  return Math.floor(Number(m[1]) * mult)
}

export type SizeUnit = 'B' | 'KiB' | 'MiB' | 'GiB' | 'TiB' | 'PiB'
const UNITS: readonly SizeUnit[] = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']

export interface FormatSizeOptions {
  /** The unit to show; default: the largest one the value reaches (under 1 KiB: whole bytes, "512 B"). */
  unit?: SizeUnit
  /** Decimals (default 1). */
  digits?: number
  /** With `unit`: a whole number of it ("32 KiB"), or when the value is not one, its bytes ("1000 bytes"). */
  exact?: boolean
}

/**
 * Bytes for people: `formatSize(1536)` is "1.5 KiB", `formatSize(2 ** 29, { unit: 'GiB', digits: 2 })`
 * "0.50 GiB", `formatSize(32768, { unit: 'KiB', exact: true })` "32 KiB".
 */
export function formatSize(bytes: number, opts: FormatSizeOptions = {}): string {
  let u = opts.unit === undefined ? 0 : UNITS.indexOf(opts.unit)
  if (opts.unit === undefined) while (u < UNITS.length - 1 && bytes >= 1024 ** (u + 1)) u++
  const scale = 1024 ** u
  if (opts.exact) return bytes % scale ? `${bytes} bytes` : `${bytes / scale} ${UNITS[u]}`
  if (u === 0) return `${bytes} B`
  return `${(bytes / scale).toFixed(opts.digits ?? 1)} ${UNITS[u]}`
}
