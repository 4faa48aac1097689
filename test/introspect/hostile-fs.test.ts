// Hostile ext images (issue 19): each built by script (mke2fs, then patched
// superblock / descriptor bytes; qemu-img for the 64 TiB qcow2). `inspect
// --json` must end within a time and memory bound with exit 1 and a "too
// costly" or structure message, no stack trace — or, where the structure is
// merely redundant (shared inode tables), exit 0 having read each table once.
import { execFileSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import zlib from 'zlib'
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

  it('128 GPT entries naming one partition: its file system is scanned once, the others are named as overlapping', async () => {
    const img = path.join(dir, 'gpt-twins.raw')
    fs.rmSync(img, { force: true })
    execFileSync('truncate', ['-s', '64M', img])
    execFileSync('sgdisk', ['-o', '-n', '1:2048:+32M', '-t', '1:8300', img], { stdio: 'ignore' })
    const part = path.join(dir, 'gpt-twins.part')
    fs.rmSync(part, { force: true })
    execFileSync('mke2fs', ['-q', '-t', 'ext4', part, '32M'])
    execFileSync('dd', [`if=${part}`, `of=${img}`, 'bs=512', 'seek=2048', 'conv=notrunc', 'status=none'])
    // Every entry of the primary array a copy of entry 0, the array's and the header's CRC32 made anew.
    const fd = fs.openSync(img, 'r+')
    const header = Buffer.alloc(512)
    fs.readSync(fd, header, 0, 512, 512)
    const entries = Buffer.alloc(128 * 128)
    fs.readSync(fd, entries, 0, entries.length, 1024)
    for (let i = 1; i < 128; i++) {
      entries.copy(entries, i * 128, 0, 128)
      entries.writeUInt32LE(i, i * 128 + 16) // a unique GUID of its own
    }
    fs.writeSync(fd, entries, 0, entries.length, 1024)
    header.writeUInt32LE(zlib.crc32(entries), 88)
    header.writeUInt32LE(0, 16)
    header.writeUInt32LE(zlib.crc32(header.subarray(0, header.readUInt32LE(12))), 16)
    fs.writeSync(fd, header, 0, 512, 512)
    fs.closeSync(fd)
    const r = inspectBounded(img)
    expect(r.status).toBe(0)
    const rep = JSON.parse(r.stdout)
    expect(rep.partitions.length).toBe(128)
    expect(rep.filesystems.length).toBe(1)
    expect(rep.errors.filter((e: { message: string }) => /overlaps volume \d+, whose file system was scanned/.test(e.message)).length).toBe(127)
  }, 60_000)

  it('inspect --small-files is the subcommand\'s: validated, and it classes small files', () => {
    const bad = timed([CLI, 'inspect', '--json', '--small-files', 'abc', '/nonexistent'], 30_000)
    expect(bad.status).toBe(1)
    expect(bad.stderr).toMatch(/--small-files/)
  })
})
