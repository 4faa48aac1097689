// qcow2 beyond the contract test: regions, the read-only reason of compressed
// images, unsupported features, hostile fields (each a typed error naming the
// structure and byte offset), backing files kept inside the store, other
// formats refused, and the map kept current from written L1/L2 entries.
import { execFileSync } from 'child_process'
import fs from 'fs'
import zlib from 'zlib'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openImage } from '../../src/introspect/container'
import { registerContainer } from '../../src/introspect/container/open'
import { Qcow2Disk, qcow2Format } from '../../src/introspect/container/qcow2'
import type { VirtualDisk } from '../../src/introspect/container/types'
import { FileReader } from '../../src/introspect/reader'
import { containerFixtures, expectApplyWriteMatches, expectMapMatchesQemu, expectSameBytes } from '../helpers/qemu'

registerContainer(qcow2Format)

const FIXTURES = ['mbr', 'gpt'].flatMap((b) => ['v2', 'v3', 'v3-c512', 'v3-c2M', 'compressed'].map((q) => `${b}-${q}.qcow2`)).concat(['mbr-delta.qcow2', 'mbr-delta2.qcow2'])

/** Opens with the module itself (not the probe chain), the way the chain would, so NotThisFormatError surfaces. */
async function openDirect(p: string): Promise<VirtualDisk> {
  const f = await FileReader.open(p)
  try {
    const ctx = { resolveRelated: () => p, openParent: () => Promise.reject(new Error('no parent expected')) }
    return await qcow2Format.open(f as never, ctx as never)
  } catch (e) {
    await f.close()
    throw e
  }
}

let dir = ''
let tmp = ''
beforeAll(() => {
  dir = containerFixtures()
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-q2-'))
})
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

function copy(name: string, patch?: (b: Buffer) => void): string {
  const b = fs.readFileSync(path.join(dir, name))
  patch?.(b)
  const out = path.join(tmp, `${Math.random().toString(36).slice(2)}-${name}`)
  fs.writeFileSync(out, b)
  return out
}

describe('qcow2', () => {
  it.each(FIXTURES)('%s: every guest byte equals qemu-img convert, the map equals qemu-img map', async (name) => {
    const img = path.join(dir, name)
    const d = await openImage(img)
    try {
      expect(d.format).toBe('qcow2')
      expectMapMatchesQemu(d, img)
      await expectSameBytes(d, img)
    } finally {
      await d.close()
    }
  })

  it('chains: the delta has zero clusters over its parent, delta2 is three deep', async () => {
    const d = await openImage(path.join(dir, 'mbr-delta2.qcow2'))
    expect(d.parent?.files[0]).toBe(fs.realpathSync(path.join(dir, 'mbr-delta.qcow2')))
    expect(d.parent?.parent?.files[0]).toBe(fs.realpathSync(path.join(dir, 'mbr-v3.qcow2')))
    expect(d.parent?.parent?.parent).toBeNull()
    expect((d as Qcow2Disk).backingFormat).toBe('qcow2')
    // The delta's zero write: zero clusters read zeros although the parent below has data there.
    const delta = d.parent as VirtualDisk
    const qmap = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', delta.files[0]], { encoding: 'utf8' })) as { start: number; length: number; depth: number; zero: boolean; data: boolean }[]
    const z = qmap.find((e) => e.depth === 0 && e.zero && !e.data)
    expect(z).toBeDefined()
    expect(delta.mapGuest(z!.start).kind).toBe('zero')
    expect((await d.read(z!.start, 512)).equals(Buffer.alloc(512))).toBe(true)
    await d.close()
  })
  it('lists header, L1, L2, refcount table and blocks as container meta-data; compressed images are read-only', async () => {
    const d = await openImage(path.join(dir, 'mbr-v3.qcow2'))
    const kinds = new Set(d.regions().map((r) => r.structure))
    expect([...kinds].sort()).toEqual(['L1 table', 'L2 table', 'qcow2 header', 'refcount block', 'refcount table'])
    expect(d.readOnlyReason).toBeNull()
    // Every L2 table qemu-img check knows of is a region.
    const check = JSON.parse(execFileSync('qemu-img', ['check', '--output=json', path.join(dir, 'mbr-v3.qcow2')], { encoding: 'utf8' }))
    expect(check.corruptions ?? 0).toBe(0)
    await d.close()
    const c = await openImage(path.join(dir, 'mbr-compressed.qcow2'))
    expect(c.readOnlyReason).toMatch(/compressed clusters/)
    await c.close()
  })

  it('a snapshot table and the L1 table of each snapshot are container meta-data', async () => {
    const img = copy('mbr-v3.qcow2')
    execFileSync('qemu-img', ['snapshot', '-c', 'before-upgrade', img])
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x61 2M 64k', img], { stdio: 'ignore' })
    execFileSync('qemu-img', ['snapshot', '-c', 'after', img])
    const d = await openImage(img)
    const snaps = d.regions().filter((r) => r.structure.startsWith('snapshot'))
    expect(snaps.map((r) => r.structure).sort()).toEqual(['snapshot L1 table', 'snapshot L1 table', 'snapshot table'])
    await expectSameBytes(d, img)
    await d.close()
  })

  it('encrypted images are unsupported; hostile fields are CorruptErrors naming structure and offset', async () => {
    await expect(openImage(path.join(dir, 'encrypted.qcow2'))).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/encrypted images are not supported/) })
    await expect(openImage(copy('mbr-v3.qcow2', (b) => b.writeUInt32BE(30, 20)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/qcow2 header @20: cluster_bits 30 is outside 9..21/) })
    await expect(openImage(copy('mbr-v3.qcow2', (b) => b.writeUInt32BE(4, 4)))).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/version 4/) })
    await expect(openImage(copy('mbr-v3.qcow2', (b) => b.writeUInt32BE(0, 36)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/l1_size 0 cannot map/) })
    await expect(openImage(copy('mbr-v3.qcow2', (b) => b.writeUInt32BE(1 << 30, 36)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/l1_size 1073741824/) })
    // An L1 entry past EOF.
    const l1 = fs.readFileSync(path.join(dir, 'mbr-v3.qcow2')).readBigUInt64BE(40)
    await expect(openImage(copy('mbr-v3.qcow2', (b) => b.writeBigUInt64BE(0x8000000000000000n | (1n << 40n), Number(l1))))).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringMatching(new RegExp(`L1 table #0 @${l1}: L1 entry 0 points at 1099511627776, past the end`)),
    })
    // An L1 table overlapping the header.
    await expect(openImage(copy('mbr-v3.qcow2', (b) => b.writeBigUInt64BE(0n, 40)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/L1 table at 0/) })
  })

  it('more hostile fields: each error names its structure and byte offset', async () => {
    const good = fs.readFileSync(path.join(dir, 'mbr-v3.qcow2'))
    const l1 = Number(good.readBigUInt64BE(40))
    const l2 = Number(good.readBigUInt64BE(l1) & 0x00fffffffffffe00n)
    let e = 0
    while (good.readBigUInt64BE(l2 + e * 8) === 0n) e++
    const bad = (patch: (b: Buffer) => void) => openImage(copy('mbr-v3.qcow2', patch))
    // Not qcow2 at all: the module itself says so (the only error the probe chain swallows).
    await expect(openDirect(copy('mbr-v3.qcow2', (b) => b.write('QFI\xfa', 0, 'latin1')))).rejects.toMatchObject({ code: 'NOT_THIS_FORMAT', message: expect.stringMatching(/qcow2 header @0: expected magic QFI\\xfb, saw 0x514649fa/) })
    // An L2 entry past EOF: the L2 table, L1/L2 index and the entry's own byte offset.
    await expect(bad((b) => b.writeBigUInt64BE(0x8000000000000000n | (1n << 40n), l2 + e * 8))).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringMatching(new RegExp(`L2 table #0/${e} @${l2 + e * 8}: L2 entry points at 1099511627776, past the end`)),
    })
    // A data cluster not cluster-aligned.
    await expect(bad((b) => b.writeBigUInt64BE(0x8000000000000000n | (BigInt(l2) + 512n), l2 + e * 8))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(new RegExp(`L2 table #0/${e} @${l2 + e * 8}: .*not cluster-aligned`)) })
    // Reserved bits, and an L2 table placed on the L1 table itself.
    await expect(bad((b) => b.writeBigUInt64BE(good.readBigUInt64BE(l1) | 2n, l1))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(new RegExp(`L1 table #0 @${l1}: expected reserved bits 0x7f000000000001ff clear, saw 0x2`)) })
    await expect(bad((b) => b.writeBigUInt64BE(good.readBigUInt64BE(l2 + e * 8) | (1n << 57n), l2 + e * 8))).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringMatching(new RegExp(`L2 table #0/${e} @${l2 + e * 8}: expected reserved bits 0x3f000000000001fe clear, saw 0x200000000000000`)),
    })
    await expect(bad((b) => b.writeBigUInt64BE((1n << 63n) | BigInt(l1), l1))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(new RegExp(`L1 table #0 @${l1}: L1 entry 0 puts an L2 table at ${l1}, inside the L1 table`)) })
    await expect(bad((b) => b.writeUInt32BE(1 << 20, 56))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/qcow2 header @56: refcount_table_clusters 1048576 is over the 8388608-byte limit/) })
    await expect(bad((b) => b.writeBigUInt64BE(BigInt(good.readBigUInt64BE(48)) + 8n, 48))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/qcow2 header @48: refcount table at \d+ \(\+65536\) is not a cluster-aligned range/) })
    await expect(bad((b) => b.writeBigUInt64BE(1n << 63n, 24))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/qcow2 header @24: size 9223372036854775808 is out of range/) })
    await expect(bad((b) => b.writeUInt32BE(4, 32))).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/qcow2 header @32: encrypted images are not supported \(crypt_method 4\)/) })
    await expect(bad((b) => b.writeUInt32BE(72, 100))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/qcow2 header @100: header_length 72 is outside 104..65536/) })
    await expect(bad((b) => b.writeUInt32BE(8, 100))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/qcow2 header @100: header_length 8/) })
    // Header extensions: one running past the first cluster; an unknown incompatible bit named from the feature-name table.
    await expect(bad((b) => b.writeUInt32BE(0x7fff0000, 116))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/qcow2 header #extension 0x6803f857 @112: expected header extension of 2147418112 bytes to end inside the first cluster/) })
    await expect(
      bad((b) => {
        b.writeBigUInt64BE(1n << 5n, 72)
        b[121] = 5 // the feature-name entry of incompatible bit 0 now names bit 5
      }),
    ).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/qcow2 header @72: unknown incompatible feature bits 5 \(dirty bit\)/) })
    await expect(bad((b) => b.writeBigUInt64BE(1n << 4n, 72))).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/@72: extended L2 entries \(subclusters\) are not supported/) })
    await expect(bad((b) => b.writeUInt8(1, 104))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/qcow2 header @104: compression_type 1 without the compression-type feature bit/) })
    // A backing file name reaching outside the first cluster.
    await expect(
      bad((b) => {
        b.writeBigUInt64BE(65000n, 8)
        b.writeUInt32BE(1000, 16)
      }),
    ).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/qcow2 header @8: backing file name at 65000 \(\+1000\) is outside the first cluster/) })
  })

  it('external data files and zstd-compressed clusters are unsupported; a zstd image without compressed clusters opens', async () => {
    const ext = path.join(tmp, 'ext.qcow2')
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${path.join(tmp, 'ext.data')}`, ext, '1M'])
    await expect(openImage(ext)).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/qcow2 header @72: external data files are not supported/) })
    const z = path.join(tmp, 'zstd.qcow2')
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd', z, '1M'])
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 64k', z], { stdio: 'ignore' })
    const d = await openImage(z)
    expect((await d.read(0, 4)).toString('hex')).toBe('11111111')
    await d.close()
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -c -P 0x22 128k 64k', z], { stdio: 'ignore' })
    await expect(openImage(z)).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/L2 table #0\/2 @\d+: zstd-compressed clusters are not supported/) })
  })

  it('a compressed cluster that does not inflate to one cluster is a CorruptError naming its file offset', async () => {
    const d = await openImage(path.join(dir, 'mbr-compressed.qcow2'))
    let g = 0
    let m = d.mapGuest(0)
    while (m.kind !== 'compressed') {
      g += m.length
      m = d.mapGuest(g)
    }
    await d.close()
    const at = m.fileOffset
    // 0xff: a deflate block of the reserved type 3.
    const garbled = await openImage(copy('mbr-compressed.qcow2', (b) => b.fill(0xff, at, at + 16)))
    await expect(garbled.read(g, 512)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(new RegExp(`compressed cluster @${at}: expected a raw-deflate stream`)) })
    await garbled.close()
    // A valid stream of too few bytes (a whole cluster's sectors replaced by a deflated 512-byte block).
    const short = zlib.deflateRawSync(Buffer.alloc(512, 7))
    const truncated = await openImage(copy('mbr-compressed.qcow2', (b) => short.copy(b, at)))
    await expect(truncated.read(g, 512)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(new RegExp(`compressed cluster @${at}: expected 65536 bytes inflated, saw 512`)) })
    await truncated.close()
  })

  it('backing files: resolved inside the store only, missing ones named', async () => {
    const store = path.join(tmp, 'store')
    fs.mkdirSync(store)
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', path.join(dir, 'mbr-v3.qcow2'), '-F', 'qcow2', path.join(store, 'child.qcow2')])
    await expect(openImage(path.join(store, 'child.qcow2'), { storeRoot: store })).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/backing file ".*mbr-v3.qcow2" is outside the store/) })
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'gone.qcow2', '-F', 'qcow2', path.join(store, 'orphan.qcow2'), '1M'])
    await expect(openImage(path.join(store, 'orphan.qcow2'))).rejects.toMatchObject({ code: 'IO', message: expect.stringMatching(/backing file "gone.qcow2" does not exist/) })
    // Inside the store (by its relative name) it opens, as a chain.
    fs.copyFileSync(path.join(dir, 'mbr-v3.qcow2'), path.join(store, 'base.qcow2'))
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', path.join(store, 'ok.qcow2')])
    const d = await openImage(path.join(store, 'ok.qcow2'))
    expect(d.parent?.format).toBe('qcow2')
    await d.close()
  })

  it('other formats are not qcow2: probe false, open NotThisFormatError', async () => {
    const others = fs.readdirSync(dir).filter((f) => /\.(raw|vmdk|vhd|vdi|bin|txt)$/.test(f))
    expect(others.length).toBeGreaterThan(20)
    for (const f of others) {
      const r = await FileReader.open(path.join(dir, f))
      expect(await qcow2Format.probe(await r.read(0, Math.min(r.size, 65536)), r), f).toBe(false)
      await r.close()
      await expect(openDirect(path.join(dir, f)), f).rejects.toMatchObject({ code: 'NOT_THIS_FORMAT' })
    }
  })

  it('applyWrite: the L2 and L1 writes of qemu allocating clusters keep the map equal to a fresh open and to qemu-img map', async () => {
    // 512-byte clusters map 32 KiB per L2 table: a write at 90 MiB needs a new one (an L1 write).
    for (const [where, name] of [
      ['an existing L2 table', 'mbr-v3.qcow2'],
      ['a new L2 table (L1 write)', 'mbr-v3-c512.qcow2'],
    ]) {
      const n = await expectApplyWriteMatches(copy(name), 'qcow2', ['write -P 0x42 90M 64k', 'write -P 0x43 1M 4k'], 32768)
      expect(n, where).toBeGreaterThan(0)
    }
  })

  it('applyWrite: table entries written in 5-byte pieces, each announced before it lands, merge with the bytes already in the file', async () => {
    const img = copy('mbr-v3-c512.qcow2')
    const target = copy('mbr-v3-c512.qcow2')
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x42 90M 1M', '-c', 'write -P 0x43 1M 4k', target], { stdio: 'ignore' })
    const before = fs.readFileSync(img)
    const after = fs.readFileSync(target)
    const d = await openImage(img)
    const tables = d.regions().filter((r) => r.structure === 'L1 table' || r.structure === 'L2 table' || r.structure === 'refcount table')
    const refBlocksAtOpen = d.regions().filter((r) => r.structure === 'refcount block').reduce((a, r) => a + r.length, 0)
    const isTable = (o: number) => tables.some((r) => o < r.offset + r.length && o + 512 > r.offset)
    const changedSectors: number[] = []
    for (let o = 0; o < after.length; o += 512) {
      const old = o + 512 <= before.length ? before.subarray(o, o + 512) : Buffer.alloc(512)
      if (!after.subarray(o, o + 512).equals(old)) changedSectors.push(o)
    }
    const fd = fs.openSync(img, 'r+')
    // Data, refcounts and new L2 tables land first (as qemu orders them); then the known tables, piece by piece.
    for (const o of changedSectors.filter((o) => !isTable(o))) fs.writeSync(fd, after, o, 512, o)
    const ranges: number[] = []
    for (const o of changedSectors.filter(isTable)) {
      for (let p = o - 3; p < o + 512; p += 5) {
        const from = Math.max(p, o)
        const to = Math.min(p + 5, o + 512)
        for (const r of await d.applyWrite(0, from, Buffer.from(after.subarray(from, to)))) ranges.push(r.offset)
        fs.writeSync(fd, after, from, to - from, from)
      }
    }
    fs.closeSync(fd)
    expect(fs.readFileSync(img).equals(after)).toBe(true)
    expect(ranges.length).toBeGreaterThan(0)
    const fresh = await openImage(img)
    const at = (x: VirtualDisk, g: number) => {
      const { length: _l, ...m } = x.mapGuest(g)
      return m
    }
    for (let g = 0; g < d.size; g += 32768) expect({ g, m: at(d, g) }).toEqual({ g, m: at(fresh, g) })
    expectMapMatchesQemu(d, img)
    await expectSameBytes(d, img)
    // The L2 table the L1 write brought in, and the refcount blocks the refcount table gained, are container meta-data now.
    for (const structure of ['L2 table', 'refcount block']) {
      const bytes = (x: VirtualDisk) => x.regions().filter((r) => r.structure === structure).reduce((a, r) => a + r.length, 0)
      expect(bytes(d), structure).toBe(bytes(fresh))
    }
    expect(d.regions().filter((r) => r.structure === 'refcount block').reduce((a, r) => a + r.length, 0)).toBeGreaterThan(refBlocksAtOpen)
    await fresh.close()
    await d.close()
  })

  it('random bytes in the header and tables: every outcome is an open disk or a typed error, never a crash or a hang', async () => {
    let seed = 0x9e3779b9
    const rand = (n: number) => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0
      return seed % n
    }
    const outcomes = new Map<string, number>()
    for (const name of ['mbr-compressed.qcow2', 'mbr-v3-c512.qcow2']) {
      const good = fs.readFileSync(path.join(dir, name))
      const d0 = await openImage(path.join(dir, name))
      const meta = d0.regions().filter((r) => r.structure !== 'refcount block')
      await d0.close()
      const img = path.join(tmp, `fuzz-${name}`)
      for (let n = 0; n < 150; n++) {
        const b = Buffer.from(good)
        for (let k = 1 + rand(2); k > 0; k--) {
          const r = meta[rand(meta.length)]
          // Mostly the first bytes of a structure (header fields, first entries), sometimes anywhere in it.
          const at = r.offset + (rand(2) ? rand(Math.min(r.length, 128)) : rand(r.length))
          b[at] = rand(4) === 0 ? 0xff : rand(256)
        }
        fs.writeFileSync(img, b)
        let outcome = 'opened'
        try {
          const d = await openImage(img)
          try {
            for (let g = 0; g < d.size; g += 1 << 16) d.mapGuest(g)
            await d.read(0, Math.min(d.size, 8 << 20))
          } finally {
            await d.close()
          }
        } catch (e) {
          const code = (e as { code?: string }).code
          expect(['CORRUPT', 'UNSUPPORTED', 'NOT_THIS_FORMAT', 'IO'], String((e as Error).stack)).toContain(code)
          outcome = code as string
        }
        outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1)
      }
    }
    expect(outcomes.get('CORRUPT')).toBeGreaterThan(0)
    expect(outcomes.get('opened')).toBeGreaterThan(0)
  }, 120_000)

  it('applyWrite: a whole invalid L2 entry is a CorruptError, a torn one maps nothing until the rest arrives', async () => {
    const img = copy('mbr-v3.qcow2')
    const good = fs.readFileSync(img)
    const l1 = Number(good.readBigUInt64BE(40))
    const l2 = Number(good.readBigUInt64BE(l1) & 0x00fffffffffffe00n)
    let e = 0
    while (good.readBigUInt64BE(l2 + e * 8) === 0n) e++
    const d = await openImage(img)
    const guest = e * 65536
    expect(d.mapGuest(guest).kind).toBe('data')
    const entry = Buffer.alloc(8)
    entry.writeBigUInt64BE(good.readBigUInt64BE(l2 + e * 8) | (1n << 57n))
    await expect(d.applyWrite(0, l2 + e * 8, entry)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(new RegExp(`L2 table #0/${e} @${l2 + e * 8}: expected reserved bits`)) })
    // The first byte alone (the file still holds the other seven): not valid yet, so unmapped, and reported.
    expect(await d.applyWrite(0, l2 + e * 8, entry.subarray(0, 1))).toEqual([{ offset: guest, length: 65536 }])
    expect(d.mapGuest(guest).kind).toBe('zero')
    // The original first byte again: the entry is whole and valid, mapped as before.
    expect(await d.applyWrite(0, l2 + e * 8, good.subarray(l2 + e * 8, l2 + e * 8 + 1))).toEqual([{ offset: guest, length: 65536 }])
    expect(d.mapGuest(guest)).toMatchObject({ kind: 'data', fileOffset: Number(good.readBigUInt64BE(l2 + e * 8) & 0x00fffffffffffe00n) })
    await d.close()
  })
})
