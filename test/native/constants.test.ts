// JS and C agree on the numbers they share: native/vmdi_constants.h (compiled into
// fuse-native's addon, which exports what it was built with as `vmdi_constants`)
// and src/native/constants.ts. Checked three ways: the built addon against the
// TypeScript, the header's text against both (so a constant added to the header
// but not exported or mirrored fails), and the key layout's range.
import fs from 'fs'
import path from 'path'
import { describe, expect, it } from 'vitest'
import * as ts from '../../src/native/constants'
import { BLOCK, blockKey as ramBlockKey } from '../../src/store/ram'

const ROOT = path.join(__dirname, '..', '..')

/** The addon as built by scripts/build-fuse-native.js (node-gyp-build picks build/Release first). */
function addonConstants(): Record<string, number> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const binding = require(path.join(ROOT, 'node_modules', 'fuse-native', 'build', 'Release', 'fuse.node'))
  return binding.vmdi_constants
}

/** The header's `#define VMDI_NAME expr`, evaluated: numbers, parentheses, <<, and earlier names. */
function headerConstants(): Record<string, number> {
  const text = fs.readFileSync(path.join(ROOT, 'native', 'vmdi_constants.h'), 'utf8')
  const out: Record<string, number> = {}
  for (const m of text.matchAll(/^#define VMDI_(\w+)[ \t]+(.+)$/gm)) {
    const expr = m[2].replace(/\/\*.*?\*\//g, '').trim()
    const js = expr.replace(/VMDI_(\w+)/g, (_, n: string) => {
      if (!(n in out)) throw new Error(`vmdi_constants.h: VMDI_${m[1]} uses VMDI_${n} before it is defined`)
      return String(out[n])
    })
    if (!/^[\d\s()<+*-]+$/.test(js)) throw new Error(`vmdi_constants.h: VMDI_${m[1]}: cannot evaluate "${expr}"`)
    out[m[1]] = Function(`return (${js})`)() as number
  }
  return out
}

/** The numeric exports of src/native/constants.ts. */
function tsConstants(): Record<string, number> {
  return Object.fromEntries(Object.entries(ts).filter(([, v]) => typeof v === 'number')) as Record<string, number>
}

describe('constants shared by the C and the TypeScript', () => {
  it('the built addon exports exactly the TypeScript mirror', () => {
    expect(addonConstants()).toEqual(tsConstants())
  })

  it('the header defines exactly those names with those values (the addon is built from it)', () => {
    const header = headerConstants()
    expect(Object.keys(header).length).toBeGreaterThanOrEqual(12)
    expect(header).toEqual(tsConstants())
    expect(header).toEqual(addonConstants())
  })

  it('the key layout: image * 2^32 + block, exact for every id and block in range', () => {
    expect(ts.BLOCK_SIZE).toBe(4096)
    expect(ts.blockKey(3, 5)).toBe(3 * 4294967296 + 5)
    const top = ts.blockKey(ts.IMAGE_ID_LIMIT - 1, 2 ** 32 - 1)
    expect(Number.isSafeInteger(top)).toBe(true)
    expect(Number.isSafeInteger(top + 1)).toBe(true)
    // the RAM tier (src/store/ram.ts) uses these, not literals of its own
    expect(BLOCK).toBe(ts.BLOCK_SIZE)
    expect(ramBlockKey(7, 9)).toBe(ts.blockKey(7, 9))
  })

  it('the ring is a power of two and the fh limit fits the binding uint32 handles', () => {
    expect(ts.RAM_RING_SLOTS & (ts.RAM_RING_SLOTS - 1)).toBe(0)
    expect(ts.FH_LIMIT).toBeLessThan(2 ** 32)
    expect(ts.SLAB_BLOCKS * ts.BLOCK_SIZE).toBe(16 * 1024 * 1024)
  })

  it('the native data path states are 2 bits, ordered NONE < READ < RW', () => {
    expect([ts.NATIVE_NONE, ts.NATIVE_READ, ts.NATIVE_RW]).toEqual([0, 1, 2])
    expect(ts.NATIVE_RW).toBeLessThan(4)
  })
})
