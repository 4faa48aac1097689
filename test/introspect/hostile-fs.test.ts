// Hostile ext images (issue 19): each built by script (mke2fs, then patched
// superblock / descriptor bytes; qemu-img for the 64 TiB qcow2). `inspect
// --json` must end within a time and memory bound with exit 1 and a "too
// costly" or structure message, no stack trace — or, where the structure is
// merely redundant (shared inode tables), exit 0 having read each table once.
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { inspectImage } from '../../src/introspect/inspect'
import { CLI } from '../helpers/cli'
import { hugeGroupCountQcow2, hugeInodeTableRaw, sharedInodeTableRaw, timed } from '../helpers/hostile'

const TIME_BOUND_MS = 15_000
const RSS_BOUND_KIB = 400 * 1024

let dir: string
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-hostile-'))
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

function inspectBounded(image: string) {
  const r = timed([CLI, 'inspect', '--json', image], 120_000)
  expect(r.maxRssKiB, `max RSS of inspect ${path.basename(image)}`).toBeGreaterThan(0)
  expect(r.ms, `inspect ${path.basename(image)} took ${r.ms} ms`).toBeLessThan(TIME_BOUND_MS)
  expect(r.maxRssKiB, `inspect ${path.basename(image)} max RSS ${r.maxRssKiB} KiB`).toBeLessThan(RSS_BOUND_KIB)
  expect(r.stderr).not.toMatch(/\n\s+at .*:\d+:\d+/) // no stack trace
  expect(r.stderr).not.toMatch(/RangeError|heap out of memory/)
  return r
}

describe('hostile ext images: inspect ends, bounded', () => {
  it('a superblock claiming 2^36 blocks in 512-block groups inside a 64 TiB sparse qcow2', () => {
    const img = hugeGroupCountQcow2(dir)
    expect(fs.statSync(img).size).toBeLessThan(4 << 20)
    const r = inspectBounded(img)
    expect(r.status).toBe(1)
    expect(r.stderr).toMatch(/too costly to introspect: 134217728 block groups .*served as data/)
  }, 60_000)

  for (const gib of [2, 16]) {
    it(`an inode table of ${gib} GiB (s_inodes_per_group x s_inode_size) in a sparse raw image`, () => {
      const img = hugeInodeTableRaw(dir, gib)
      const r = inspectBounded(img)
      expect(r.status).toBe(1)
      expect(r.stderr).toMatch(/too costly to introspect: .*over the scan budget of .*served as data/)
      fs.rmSync(img)
    }, 60_000)
  }

  it('every group descriptor naming one inode table: the table is read once', async () => {
    const img = sharedInodeTableRaw(dir)
    const r = inspectBounded(img)
    expect(r.status).toBe(0)
    const rep = JSON.parse(r.stdout)
    const f = rep.filesystems[0]
    expect(f.skipped.reasons.join('\n')).toMatch(/group\(s\) name an inode table that overlaps another group's: each table is read once/)
    // One table (8,192 inodes x 256 bytes = 2 MiB) plus descriptors and bitmaps, not 8 tables.
    const ins = await inspectImage(img)
    const table = 8192 * 256
    expect(ins.budget.bytes).toBeLessThan(2 * table)
    expect(ins.budget.bytes).toBeGreaterThanOrEqual(table)
    await ins.close()
  }, 60_000)

  it('inspect --small-files is the subcommand\'s: validated, and it classes small files', () => {
    const bad = timed([CLI, 'inspect', '--json', '--small-files', 'abc', '/nonexistent'], 30_000)
    expect(bad.status).toBe(1)
    expect(bad.stderr).toMatch(/--small-files/)
  })
})
