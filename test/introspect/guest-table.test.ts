// GuestTable against a per-sector oracle under random bulk loads and remaps:
// forward lookups, reverse lookups and the allocated byte count.
import { describe, expect, it } from 'vitest'
import { GuestTable, RunKind } from '../../src/introspect/container/guest-table'
import { rng } from '../helpers/rng'


type Cell = { file: number; off: number; kind: RunKind } | null
const U = 512

function checkAgainst(t: GuestTable, cells: Cell[]): void {
  let allocated = 0
  const back = new Map<string, number>()
  cells.forEach((c, i) => {
    const { run } = t.lookup(i * U)
    if (!c) expect({ i, run }).toEqual({ i, run: null })
    else {
      expect(run, `sector ${i}`).not.toBeNull()
      expect(run!.kind).toBe(c.kind)
      if (c.kind === RunKind.Data) {
        expect(run!.file).toBe(c.file)
        expect(run!.fileOffset + (i * U - run!.guest)).toBe(c.off)
        back.set(`${c.file}:${c.off}`, i * U)
        allocated += U
      }
    }
  })
  expect(t.allocatedBytes()).toBe(allocated)
  for (const [k, g] of back) {
    const [file, off] = k.split(':').map(Number)
    const r = t.reverse(file, off)
    expect({ k, g: r.guest }).toEqual({ k, g })
  }
}

describe('GuestTable', () => {
  it('bulk load, then 400 random remaps, agree with a per-sector oracle both ways', () => {
    const r = rng(7)
    const N = 600
    const cells: Cell[] = new Array(N).fill(null)
    const t = new GuestTable()
    // Distinct file offsets per sector: a permutation of file space, in grains of 4 sectors.
    let next = 0
    const order = Array.from({ length: N / 4 }, (_, g) => g).sort(() => r() - 0.5)
    for (const g of order) {
      if (r() < 0.3) continue
      const kind = r() < 0.1 ? RunKind.Zero : RunKind.Data
      const file = r() < 0.2 ? 1 : 0
      const off = kind === RunKind.Zero ? 0 : (next += 4) * U
      t.add(g * 4 * U, 4 * U, file, off, kind)
      for (let s = 0; s < 4; s++) cells[g * 4 + s] = kind === RunKind.Zero ? { file, off: 0, kind } : { file, off: off + s * U, kind }
    }
    t.finish()
    checkAgainst(t, cells)
    for (let i = 0; i < 400; i++) {
      const s = Math.floor(r() * N)
      const n = Math.min(N - s, 1 + Math.floor(r() * 9))
      if (r() < 0.3) {
        t.remap(s * U, n * U, null)
        for (let k = s; k < s + n; k++) cells[k] = null
      } else {
        next += 16
        const file = r() < 0.5 ? 0 : 1
        t.remap(s * U, n * U, { file, fileOffset: next * U, kind: RunKind.Data })
        for (let k = s; k < s + n; k++) cells[k] = { file, off: (next + k - s) * U, kind: RunKind.Data }
      }
    }
    checkAgainst(t, cells)
  })

  it('refuses a guest range mapped twice', () => {
    const t = new GuestTable()
    t.add(0, 4096, 0, 0)
    t.add(2048, 4096, 0, 65536)
    expect(() => t.finish()).toThrow('mapped twice')
  })
})
