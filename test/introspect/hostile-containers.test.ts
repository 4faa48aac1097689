// Hostile container tables (issue 19, the container half): tables whose entries
// all name one cluster, grain or block could not merge into runs and each cost
// a JS object (1.8–4 GB for a 1 MiB file). Each image is built here from bytes
// (or qemu-img + patching); `inspect` must end within 10 s and 300 MB of RSS,
// with exit 1 and a message naming the structure, or a bounded map. Also: an
// unchanged L2 table rewritten through applyWrite costs lookups, not remaps.
import { execFileSync, spawnSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openImage } from '../../src/introspect/container'
import { BYTES_PER_RUN } from '../../src/introspect/container/guest-table'
import { CLI } from '../helpers/cli'

const C = 65536
let tmp = ''
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-hostile-'))
})
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

/** `inspect IMAGE --json` in a child: exit status, output, wall time and max RSS (from /usr/bin/time). */
function inspect(image: string): { status: number | null; out: string; ms: number; rssMB: number } {
  const rssFile = path.join(tmp, 'rss')
  const t0 = Date.now()
  const r = spawnSync('/usr/bin/time', ['-f', '%M', '-o', rssFile, process.execPath, CLI, 'inspect', image, '--json'], { encoding: 'utf8', timeout: 60_000 })
  const ms = Date.now() - t0
  const rssMB = Number(fs.readFileSync(rssFile, 'utf8').trim().split('\n').pop()) / 1024
  return { status: r.status, out: `${r.stdout}${r.stderr}`, ms, rssMB }
}

function expectRefused(image: string, message: RegExp): void {
  const r = inspect(image)
  expect(r.out).toMatch(message)
  expect(r.status).toBe(1)
  expect(r.out).not.toMatch(/\n\s+at /) // no stack trace
  expect(r.ms).toBeLessThan(10_000)
  expect(r.rssMB).toBeLessThan(300)
}

/**
 * A qcow2 v3 with 64 KiB clusters: header, L1, refcount table, `tables` L2 tables; entry e of
 * table t holds entry(t, e) (0: unallocated). L1 entry i names table l1Names(i). Data clusters
 * may lie past the tables: the file is extended sparsely to hold them.
 */
function qcow2(name: string, o: { size: number; l1: number; tables: number; l1Names: (i: number) => number; entry: (t: number, e: number) => bigint; fileSize?: number }): string {
  const l2At = 3 * C
  const head = Buffer.alloc(l2At + o.tables * C)
  head.writeUInt32BE(0x514649fb, 0)
  head.writeUInt32BE(3, 4)
  head.writeUInt32BE(16, 20)
  head.writeBigUInt64BE(BigInt(o.size), 24)
  head.writeUInt32BE(o.l1, 36)
  head.writeBigUInt64BE(BigInt(C), 40)
  head.writeBigUInt64BE(BigInt(2 * C), 48)
  head.writeUInt32BE(1, 56)
  head.writeUInt32BE(4, 96)
  head.writeUInt32BE(104, 100)
  for (let i = 0; i < o.l1; i++) {
    const t = o.l1Names(i)
    if (t >= 0) head.writeBigUInt64BE(BigInt(l2At + t * C) | (1n << 63n), C + i * 8)
  }
  for (let t = 0; t < o.tables; t++) for (let e = 0; e < C / 8; e++) head.writeBigUInt64BE(o.entry(t, e), l2At + t * C + e * 8)
  const p = path.join(tmp, name)
  fs.writeFileSync(p, head)
  if (o.fileSize) fs.truncateSync(p, o.fileSize)
  return p
}

const COPIED = 1n << 63n

describe('hostile container tables', () => {
  it('qcow2: 4,096 L1 entries naming one L2 table (320 KiB file) are refused, naming the L1 table', () => {
    const data = BigInt(3 * C + C) // the cluster after the one L2 table
    const p = qcow2('l1-one-l2.qcow2', { size: 4096 * 8192 * C, l1: 4096, tables: 1, l1Names: () => 0, entry: () => data | COPIED, fileSize: 5 * C })
    expectRefused(p, /L1 table #1 @\d+: L1 entries 0 and 1 both name the L2 table at 196608/)
  })

  it('qcow2: 16 L2 tables whose 131,072 entries all name one cluster are refused, naming the L2 tables', () => {
    const data = BigInt(3 * C + 16 * C)
    const p = qcow2('l2-one-cluster.qcow2', { size: 16 * 8192 * C, l1: 16, tables: 16, l1Names: (i) => i, entry: () => data | COPIED, fileSize: 20 * C })
    expectRefused(p, /qcow2 L2 tables: too costly to introspect: the qcow2 L2 tables map more than 81920 runs that do not merge \(31 bytes each; at most max\(65536, file bytes \/ 16\) for 1310720 bytes of files\); served as data/)
  })

  it('qcow2: one L2 table whose 8,192 entries name one cluster is refused as corrupt (no file byte is data of two guest ranges)', () => {
    const data = BigInt(4 * C)
    const p = qcow2('l2-8k-one-cluster.qcow2', { size: 8192 * C, l1: 1, tables: 1, l1Names: () => 0, entry: () => data | COPIED, fileSize: 5 * C })
    expectRefused(p, /file bytes at 262144 are stored data of guest offsets 0 and 65536: the qcow2 L2 tables name one cluster or grain twice/)
  })

  it('qcow2: a compressed cluster past the end of the file is refused when the L2 table is read, naming it', () => {
    // 64 KiB clusters: compressed-size field from bit 54, offset in bits 0..53.
    const p = qcow2('compressed-past-end.qcow2', { size: 8192 * C, l1: 1, tables: 1, l1Names: () => 0, entry: (_t, e) => (e === 3 ? (1n << 62n) | BigInt(10 * C) : 0n) })
    expectRefused(p, /L2 table #0\/3 @\d+: compressed cluster at 655360 \(\+512 bytes\) starts past the end of the 262144-byte file/)
  })

  it('VMDK: grain tables whose entries all name one grain, and a grain directory naming one table everywhere, are refused', () => {
    const base = path.join(tmp, 'one-grain.vmdk')
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', base, '1G'])
    const b = fs.readFileSync(base)
    const grainSize = Number(b.readBigUInt64LE(20)) * 512
    const perGT = b.readUInt32LE(44)
    const gdAt = Number(b.readBigUInt64LE(56)) * 512
    const overHead = Number(b.readBigUInt64LE(64))
    const gdEntries = Math.ceil((1 << 30) / (grainSize * perGT))
    const grain = Buffer.alloc(grainSize, 0x5a)
    const withGrain = Buffer.concat([b, Buffer.alloc(overHead * 512 > b.length ? overHead * 512 - b.length : 0), grain])
    const grainSector = (withGrain.length - grainSize) / 512
    for (let i = 0; i < gdEntries; i++) {
      const gt = withGrain.readUInt32LE(gdAt + i * 4) * 512
      for (let e = 0; e < perGT; e++) withGrain.writeUInt32LE(grainSector, gt + e * 4)
    }
    fs.writeFileSync(base, withGrain)
    expectRefused(base, /the VMDK grain tables name one cluster or grain twice/)
    // Every grain-directory entry naming the first grain table.
    const oneGT = Buffer.from(withGrain)
    const first = oneGT.readUInt32LE(gdAt)
    for (let i = 0; i < gdEntries; i++) oneGT.writeUInt32LE(first, gdAt + i * 4)
    const p = path.join(tmp, 'one-gt.vmdk')
    fs.writeFileSync(p, oneGT)
    expectRefused(p, /grain directory #1 @\d+: entries 0 and 1 name grain tables at \d+ and \d+, which overlap/)
  })

  it('VMDK: ZERO extents adding up past 2^53 bytes, and an extent named ".", are errors saying so', () => {
    const desc = (extents: string) => `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n${extents}\n`
    const zero = path.join(tmp, 'zero-sum.vmdk')
    const big = 2 ** 43 // sectors: 2^52 bytes each, safe alone
    fs.writeFileSync(zero, desc(`RW ${big} ZERO\nRW ${big} ZERO\nRW ${big} ZERO`))
    expectRefused(zero, /descriptor @0: extents add up to 26388279066624 sectors, more than the 9007199254740991 bytes a disk can have/)
    const dot = path.join(tmp, 'dot.vmdk')
    fs.writeFileSync(dot, desc('RW 2048 FLAT "." 0'))
    expectRefused(dot, /extent 1 "\." names .*, which is a directory, not an image file/)
  })

  describe('VHD differencing', () => {
    const block = 2 << 20
    function checksum(b: Buffer, at: number, len: number, field: number): void {
      b.writeUInt32BE(0, at + field)
      let sum = 0
      for (let i = at; i < at + len; i++) sum += b[i]
      b.writeUInt32BE(~sum >>> 0, at + field)
    }
    /** A differencing VHD over parent.vhd: `blocks` BAT entries, entry i naming block blockOf(i), every sector bitmap 0xAA (every other sector the child's). Sparse. */
    function differencing(name: string, size: number, blocks: number, blockOf: (i: number) => number): string {
      const parent = path.join(tmp, 'parent.vhd')
      if (!fs.existsSync(parent)) execFileSync('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=dynamic,force_size=on', parent, String(size)])
      const entries = size / block
      const batAt = 2048
      const batBytes = Math.ceil((entries * 4) / 512) * 512
      const first = batAt + batBytes
      const span = 512 + block
      const total = first + blocks * span + 512
      const head = Buffer.alloc(first)
      const footer = Buffer.alloc(512)
      footer.write('conectix', 0, 'latin1')
      footer.writeUInt32BE(2, 8)
      footer.writeUInt32BE(0x00010000, 12)
      footer.writeBigUInt64BE(512n, 16)
      footer.writeBigUInt64BE(BigInt(size), 40)
      footer.writeBigUInt64BE(BigInt(size), 48)
      footer.writeUInt32BE(4, 60)
      crypto.randomBytes(16).copy(footer, 68)
      checksum(footer, 0, 512, 64)
      footer.copy(head, 0)
      const h = 512
      head.write('cxsparse', h, 'latin1')
      head.writeBigUInt64BE(0xffffffffffffffffn, h + 8)
      head.writeBigUInt64BE(BigInt(batAt), h + 16)
      head.writeUInt32BE(0x00010000, h + 24)
      head.writeUInt32BE(entries, h + 28)
      head.writeUInt32BE(block, h + 32)
      const loc = Buffer.from('.\\parent.vhd', 'utf16le')
      head.write('W2ru', h + 576, 'latin1')
      head.writeUInt32BE(512, h + 576 + 4)
      head.writeUInt32BE(loc.length, h + 576 + 8)
      head.writeBigUInt64BE(1536n, h + 576 + 16)
      loc.copy(head, 1536)
      checksum(head, h, 1024, 36)
      for (let i = 0; i < entries; i++) head.writeUInt32BE(i < blocks ? (first + blockOf(i) * span) / 512 : 0xffffffff, batAt + i * 4)
      const p = path.join(tmp, name)
      const fd = fs.openSync(p, 'w')
      fs.writeSync(fd, head, 0, head.length, 0)
      const bitmap = Buffer.alloc(512, 0xaa)
      for (let k = 0; k < blocks; k++) fs.writeSync(fd, bitmap, 0, 512, first + k * span)
      fs.writeSync(fd, footer, 0, 512, total - 512)
      fs.closeSync(fd)
      return p
    }

    it('every BAT entry naming one block whose bitmap is 0xAA is refused, naming the BAT', () => {
      const p = differencing('diff-one-block.vhd', 1 << 30, 512, () => 0)
      expectRefused(p, /vhd BAT #1 @\d+: entries 0 and 1 name blocks at \d+ and \d+, which overlap/)
    })

    it('64 distinct blocks with 0xAA bitmaps (131,072 runs that cannot merge) map within the bounds', () => {
      const p = differencing('diff-aa.vhd', 1 << 30, 64, (i) => i)
      const r = inspect(p)
      expect(r.status).toBe(0)
      const j = JSON.parse(r.out.slice(0, r.out.lastIndexOf('}') + 1))
      expect(j.allocatedBytes).toBe(64 * block / 2)
      expect(r.ms).toBeLessThan(10_000)
      expect(r.rssMB).toBeLessThan(300)
    })
  })

  it('VDI: a dynamic image whose block map is a hole (every entry names block 0) is refused, naming the block map', () => {
    const p = path.join(tmp, 'hole.vdi')
    execFileSync('qemu-img', ['create', '-q', '-f', 'vdi', p, '1T'])
    const h = Buffer.alloc(512)
    const fd = fs.openSync(p, 'r+')
    fs.readSync(fd, h, 0, 512, 0)
    fs.closeSync(fd)
    const offBlocks = h.readUInt32LE(0x154)
    const offData = h.readUInt32LE(0x158)
    const blocks = h.readUInt32LE(0x180)
    fs.truncateSync(p, offData + h.readUInt32LE(0x178)) // block 0 exists (a hole too)
    execFileSync('fallocate', ['--punch-hole', '--offset', String(offBlocks), '--length', String(blocks * 4), p])
    expectRefused(p, /vdi block map #1 @\d+: entry 1 names block 0, which an earlier entry names too/)
  })
})

describe('a fragmented qcow2 (1,048,576 runs that cannot merge)', () => {
  // 128 L2 tables; entry e of table t names cluster 2·(t·8192 + e) past the tables: every other cluster, so no two runs merge. Sparse: 128 GiB apparent.
  const tables = 128
  const dataAt = 3 * C + tables * C
  let p = ''
  beforeAll(() => {
    p = qcow2('fragmented.qcow2', {
      size: tables * 8192 * C,
      l1: tables,
      tables,
      l1Names: (i) => i,
      entry: (t, e) => BigInt(dataAt + 2 * (t * 8192 + e) * C) | COPIED,
      fileSize: dataAt + 2 * tables * 8192 * C,
    })
  })

  it(`maps at ${BYTES_PER_RUN} bytes a run; an unchanged L2 table rewritten (8,192 entries) costs under 100 ms and changes nothing`, async () => {
    const d = await openImage(p)
    try {
      const runs = tables * 8192
      expect(d.allocatedBytes()).toBe(runs * C)
      // The map's typed arrays: runs × BYTES_PER_RUN (plus a few regions).
      expect(d.mapBytes() - d.regions().length * 48).toBe(runs * BYTES_PER_RUN)
      const fd = fs.openSync(p, 'r')
      const l2 = Buffer.alloc(C)
      fs.readSync(fd, l2, 0, C, 3 * C + 5 * C) // table 5
      fs.closeSync(fd)
      const before = d.mapGuest((5 * 8192 + 7) * C)
      const t0 = process.hrtime.bigint()
      const changed = await d.applyWrite(0, 3 * C + 5 * C, l2)
      const ms = Number(process.hrtime.bigint() - t0) / 1e6
      expect(changed).toEqual([])
      expect(ms).toBeLessThan(100)
      expect(d.mapGuest((5 * 8192 + 7) * C)).toEqual(before)
      // One entry changed in the same rewrite: exactly its cluster is reported and remapped.
      const moved = Buffer.from(l2)
      moved.writeBigUInt64BE(BigInt(dataAt + C) | COPIED, 7 * 8) // an odd cluster: unused so far
      expect(await d.applyWrite(0, 3 * C + 5 * C, moved)).toEqual([{ offset: (5 * 8192 + 7) * C, length: C }])
      expect(d.mapGuest((5 * 8192 + 7) * C)).toMatchObject({ kind: 'data', fileOffset: dataAt + C })
    } finally {
      await d.close()
    }
  })

  it('2,048 changed entries of an L2 table on it are learnt without holding the event loop (gaps under 100 ms)', async () => {
    const d = await openImage(p)
    try {
      const fd = fs.openSync(p, 'r')
      const l2 = Buffer.alloc(C)
      fs.readSync(fd, l2, 0, C, 3 * C + 9 * C) // table 9
      fs.closeSync(fd)
      // A quarter of the entries moved to the odd cluster beside each (unused): 2,048 remaps of a
      // 1M-run table, several seconds of work that yields every few ms.
      for (let e = 0; e < 2048; e++) l2.writeBigUInt64BE(BigInt(dataAt + (2 * (9 * 8192 + e) + 1) * C) | COPIED, e * 8)
      let last = performance.now()
      let gap = 0
      const tick = setInterval(() => {
        const now = performance.now()
        gap = Math.max(gap, now - last)
        last = now
      }, 1)
      let changed: { offset: number; length: number }[]
      try {
        changed = await d.applyWrite(0, 3 * C + 9 * C, l2)
      } finally {
        clearInterval(tick)
      }
      expect(changed.length).toBe(2048)
      expect(d.mapGuest((9 * 8192 + 100) * C)).toMatchObject({ kind: 'data', fileOffset: dataAt + (2 * (9 * 8192 + 100) + 1) * C })
      expect(gap, 'longest the event loop waited during the update (ms)').toBeLessThan(100)
    } finally {
      await d.close()
    }
  }, 120_000)
})
