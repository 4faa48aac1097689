// ExtentMap against a plain per-block array (the obvious oracle) under random
// set/claim sequences, plus the serialisation round trip and its refusals.
import { describe, expect, it } from 'vitest'
import { BlockClass, priorityOf } from '../../src/introspect/classes'
import { ExtentMap, Run } from '../../src/introspect/map/extent-map'
import { rng } from '../helpers/rng'

function expand(m: ExtentMap, size: number): number[] {
  const a = new Array<number>(size).fill(BlockClass.Data)
  for (const [s, c, k] of m.runs()) for (let b = s; b < s + c; b++) a[b] = k
  return a
}

function checkInvariants(m: ExtentMap): void {
  let prev: Run | undefined
  for (const r of m.runs()) {
    expect(r[1]).toBeGreaterThan(0)
    expect(r[2]).not.toBe(BlockClass.Data)
    if (prev) {
      expect(r[0]).toBeGreaterThanOrEqual(prev[0] + prev[1])
      if (r[0] === prev[0] + prev[1]) expect(r[2]).not.toBe(prev[2])
    }
    prev = r
  }
}

describe('ExtentMap', () => {
  it('matches a per-block array under 5,000 random set() and claim() calls', () => {
    const size = 2000
    const r = rng(42)
    const m = new ExtentMap()
    const oracle = new Array<number>(size).fill(BlockClass.Data)
    const classes = [BlockClass.Data, BlockClass.Superblock, BlockClass.InodeTable, BlockClass.Directory, BlockClass.Journal, BlockClass.ExtentTree]
    for (let i = 0; i < 5000; i++) {
      const s = Math.floor(r() * size)
      const c = Math.min(size - s, 1 + Math.floor(r() * (r() < 0.8 ? 8 : 300)))
      const k = classes[Math.floor(r() * classes.length)]
      if (r() < 0.7) {
        m.set(s, c, k)
        for (let b = s; b < s + c; b++) oracle[b] = k
      } else if (k !== BlockClass.Data) {
        m.claim(s, c, k)
        for (let b = s; b < s + c; b++) {
          if (oracle[b] === BlockClass.Data || priorityOf(oracle[b]) < priorityOf(k)) oracle[b] = k
        }
      }
      if (i % 500 === 0) checkInvariants(m)
    }
    checkInvariants(m)
    expect(expand(m, size)).toEqual(oracle)
    for (let b = 0; b < size; b++) expect(m.classOf(b)).toBe(oracle[b])
    const clipped = [...m.runsIn(100, 50)]
    for (const [s, c] of clipped) expect(s >= 100 && s + c <= 150).toBe(true)
    expect(clipped.reduce((a, x) => a + x[1], 0)).toBe(oracle.slice(100, 150).filter((k) => k !== BlockClass.Data).length)
  })

  it('fromRuns resolves overlaps by class priority', () => {
    const m = ExtentMap.fromRuns([
      [10, 10, BlockClass.Journal],
      [0, 5, BlockClass.Directory],
      [12, 2, BlockClass.Superblock],
      [4, 3, BlockClass.Directory],
      [15, 10, BlockClass.InodeTable],
    ])
    expect([...m.runs()]).toEqual([
      [0, 7, BlockClass.Directory],
      [10, 2, BlockClass.Journal],
      [12, 2, BlockClass.Superblock],
      [14, 1, BlockClass.Journal],
      [15, 10, BlockClass.InodeTable],
    ])
  })

  it('serialises and refuses damaged input', () => {
    const m = new ExtentMap()
    m.set(0, 1, BlockClass.Superblock)
    m.set(2 ** 40, 5, BlockClass.Directory)
    const buf = m.serialize(4096)
    const back = ExtentMap.deserialize(buf)
    expect(back.blockSize).toBe(4096)
    expect([...back.map.runs()]).toEqual([...m.runs()])
    const bad = Buffer.from(buf)
    bad[buf.length - 1] ^= 1
    expect(() => ExtentMap.deserialize(bad)).toThrow('checksum mismatch')
    const v2 = Buffer.from(buf)
    v2.writeUInt32LE(2, 8)
    expect(() => ExtentMap.deserialize(v2)).toThrow('version 2 is not supported')
    expect(() => ExtentMap.deserialize(buf.subarray(0, 30))).toThrow('expected 26 run bytes, saw 6')
  })
})
