// Sizes on the command line: 512M, 4G, 1073741824 (binary multiples).

/** Bytes in a size such as 512M, 4G, 32K or 1073741824; throws naming `what` when it is not one. */
export function parseSize(v: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?$/i.exec(v.trim())
  if (!m) throw new Error(`${what} "${v}" is not a size: write e.g. 512M, 4G or 1073741824`)
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't']
  return Math.floor(Number(m[1]) * mult)
}
