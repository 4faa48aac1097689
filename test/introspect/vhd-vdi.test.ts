// VHD and VDI beyond the contract test: a differencing VHD built byte by byte
// (qemu cannot make one, nor read its parent) checked against its known
// content; regions; hostile fields as typed errors naming structure and
// offset; parents inside the store; other formats refused; and the map kept
// current from written BAT / block-map entries.
import crypto from 'crypto'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openImage } from '../../src/introspect/container'
import { vdiFormat } from '../../src/introspect/container/vdi'
import { vhdFormat } from '../../src/introspect/container/vhd'
import { FileReader } from '../../src/introspect/reader'
import { containerFixtures, expectApplyWriteMatches, qemuRaw } from '../helpers/qemu'

let dir = ''
let tmp = ''
beforeAll(() => {
  dir = containerFixtures()
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-vhd-'))
})
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

function copy(name: string, patch?: (b: Buffer) => void): string {
  const b = fs.readFileSync(path.join(dir, name))
  patch?.(b)
  const out = path.join(tmp, `${crypto.randomBytes(4).toString('hex')}-${name}`)
  fs.writeFileSync(out, b)
  return out
}

function vhdChecksum(b: Buffer, at: number, len: number, field: number): void {
  b.writeUInt32BE(0, at + field)
  let sum = 0
  for (let i = at; i < at + len; i++) sum += b[i]
  b.writeUInt32BE(~sum >>> 0, at + field)
}

/** A differencing VHD over `parentName` (in the same directory): block 0 holds sectors 0-7 and 100-101, block 5 all of it. */
function buildDifferencing(size: number, parentName: string, locator: string): { file: Buffer; sectors: Map<number, number> } {
  const block = 2 << 20
  const entries = Math.ceil(size / block)
  const batAt = 2048
  const batBytes = Math.ceil((entries * 4) / 512) * 512
  const bitmapBytes = 512
  const blockAt = [batAt + batBytes, batAt + batBytes + bitmapBytes + block]
  const total = blockAt[1] + bitmapBytes + block + 512
  const b = Buffer.alloc(total)
  const footer = Buffer.alloc(512)
  footer.write('conectix', 0, 'latin1')
  footer.writeUInt32BE(2, 8)
  footer.writeUInt32BE(0x00010000, 12)
  footer.writeBigUInt64BE(512n, 16)
  footer.write('vmdi', 28, 'latin1')
  footer.write('Wi2k', 36, 'latin1')
  footer.writeBigUInt64BE(BigInt(size), 40)
  footer.writeBigUInt64BE(BigInt(size), 48)
  footer.writeUInt32BE(4, 60)
  crypto.randomBytes(16).copy(footer, 68)
  vhdChecksum(footer, 0, 512, 64)
  footer.copy(b, 0)
  footer.copy(b, total - 512)
  const h = 512
  b.write('cxsparse', h, 'latin1')
  b.writeBigUInt64BE(0xffffffffffffffffn, h + 8)
  b.writeBigUInt64BE(BigInt(batAt), h + 16)
  b.writeUInt32BE(0x00010000, h + 24)
  b.writeUInt32BE(entries, h + 28)
  b.writeUInt32BE(block, h + 32)
  const name = Buffer.from(parentName, 'utf16le')
  name.swap16()
  name.copy(b, h + 64)
  const loc = Buffer.from(locator, 'utf16le')
  b.write('W2ru', h + 576, 'latin1')
  b.writeUInt32BE(512, h + 576 + 4)
  b.writeUInt32BE(loc.length, h + 576 + 8)
  b.writeBigUInt64BE(1536n, h + 576 + 16)
  loc.copy(b, 1536)
  vhdChecksum(b, h, 1024, 36)
  for (let i = 0; i < entries; i++) b.writeUInt32BE(0xffffffff, batAt + i * 4)
  b.writeUInt32BE(blockAt[0] / 512, batAt)
  b.writeUInt32BE(blockAt[1] / 512, batAt + 5 * 4)
  const sectors = new Map<number, number>()
  // Block 0: garbage everywhere, real bytes only where the bitmap says.
  b.fill(0xee, blockAt[0] + bitmapBytes, blockAt[0] + bitmapBytes + block)
  for (const s of [0, 1, 2, 3, 4, 5, 6, 7, 100, 101]) {
    b[blockAt[0] + (s >> 3)] |= 0x80 >> (s & 7)
    b.fill(0xab, blockAt[0] + bitmapBytes + s * 512, blockAt[0] + bitmapBytes + (s + 1) * 512)
    sectors.set(s, 0xab)
  }
  b.fill(0xff, blockAt[1], blockAt[1] + bitmapBytes)
  b.fill(0xcd, blockAt[1] + bitmapBytes, blockAt[1] + bitmapBytes + block)
  for (let s = 0; s < block / 512; s++) sectors.set(5 * 4096 + s, 0xcd)
  return { file: b, sectors }
}

describe('VHD', () => {
  it('a differencing disk reads its own sectors where the bitmap says and the parent everywhere else', async () => {
    const store = path.join(tmp, 'diffstore')
    fs.mkdirSync(store)
    fs.copyFileSync(path.join(dir, 'mbr-dynamic.vhd'), path.join(store, 'parent.vhd'))
    const size = fs.statSync(path.join(dir, 'mbr.raw')).size
    const { file, sectors } = buildDifferencing(size, 'parent.vhd', '.\\parent.vhd')
    fs.writeFileSync(path.join(store, 'child.vhd'), file)
    const d = await openImage(path.join(store, 'child.vhd'))
    expect([d.format, d.subformat, d.parent?.subformat]).toEqual(['vhd', 'differencing', 'dynamic'])
    const want = fs.readFileSync(qemuRaw(path.join(store, 'parent.vhd')))
    for (const [s, v] of sectors) want.fill(v, s * 512, (s + 1) * 512)
    const got = await d.read(0, d.size)
    expect(got.equals(want)).toBe(true)
    expect(d.mapGuest(8 * 512).kind).toBe('parent')
    expect(d.mapGuest(100 * 512)).toMatchObject({ kind: 'data', length: 1024 })
    expect(new Set(d.regions().map((r) => r.structure))).toEqual(new Set(['vhd footer', 'vhd footer copy', 'vhd dynamic header', 'vhd parent locator', 'vhd BAT', 'vhd sector bitmap']))
    await d.close()
    // The parent resolved by name only when it is inside the store; a missing one is named.
    fs.writeFileSync(path.join(store, 'orphan.vhd'), buildDifferencing(size, 'gone.vhd', '.\\gone.vhd').file)
    await expect(openImage(path.join(store, 'orphan.vhd'))).rejects.toMatchObject({ code: 'IO', message: expect.stringMatching(/parent ".*gone.vhd" does not exist/) })
    fs.writeFileSync(path.join(store, 'escape.vhd'), buildDifferencing(size, 'x.vhd', '..\\..\\mbr-dynamic.vhd').file)
    await expect(openImage(path.join(store, 'escape.vhd'), { storeRoot: store })).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/outside the store/) })
  })

  it('hostile footers and BATs are typed errors naming structure and offset', async () => {
    const size = fs.statSync(path.join(dir, 'mbr-dynamic.vhd')).size
    const raw = fs.readFileSync(path.join(dir, 'mbr-dynamic.vhd'))
    const batAt = Number(raw.readBigUInt64BE(512 + 16))
    await expect(openImage(copy('mbr-dynamic.vhd', (b) => (b[size - 512 + 100] ^= 1)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(new RegExp(`vhd footer @${size - 512 + 64}: checksum expected`)) })
    // A BAT entry pointing into the header, and one past EOF.
    await expect(openImage(copy('mbr-dynamic.vhd', (b) => b.writeUInt32BE(1, batAt)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(new RegExp(`vhd BAT #0 @${batAt}: entry 0 points at sector 1, into the header or BAT`)) })
    await expect(openImage(copy('mbr-dynamic.vhd', (b) => b.writeUInt32BE(0x7ffffff0, batAt + 8)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/vhd BAT #2 .*past the end of the file/) })
  })

  it('applyWrite: BAT writes of qemu allocating blocks keep the map equal to a fresh open and to qemu-img map', async () => {
    await checkApplyWrite('mbr-dynamic.vhd', 'vpc')
  })
})

describe('VDI', () => {
  it('regions and hostile block maps', async () => {
    const d = await openImage(path.join(dir, 'mbr-dynamic.vdi'))
    expect(d.regions().map((r) => r.structure)).toEqual(['vdi header', 'vdi block map'])
    await d.close()
    const raw = fs.readFileSync(path.join(dir, 'mbr-dynamic.vdi'))
    const offBlocks = raw.readUInt32LE(0x154)
    await expect(openImage(copy('mbr-dynamic.vdi', (b) => b.writeUInt32LE(0x7fffff, offBlocks + 4 * 3)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(new RegExp(`vdi block map #3 @${offBlocks + 12}: entry 3 names block 8388607, beyond`)) })
    await expect(openImage(copy('mbr-dynamic.vdi', (b) => b.writeUInt32LE(1 << 24, 0x180)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/vdi header @340: block map of 16777216 entries at \d+ does not fit/) })
    await expect(openImage(copy('mbr-dynamic.vdi', (b) => b.writeUInt32LE(1 << 30, 0x180)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/vdi header @384: 1073741824 blocks \(at most/) })
    await expect(openImage(copy('mbr-dynamic.vdi', (b) => b.writeUInt32LE(1000, 0x178)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/block size 1000 is not a power of two/) })
  })

  it('applyWrite: block-map writes of qemu allocating blocks keep the map equal to a fresh open and to qemu-img map', async () => {
    await checkApplyWrite('mbr-dynamic.vdi', 'vdi')
  })
})

it('other formats are neither VHD nor VDI', async () => {
  for (const f of ['mbr.raw', 'mbr-v3.qcow2', 'mbr-monolithicSparse.vmdk', 'random.bin', 'notes.txt']) {
    const r = await FileReader.open(path.join(dir, f))
    const head = await r.read(0, Math.min(r.size, 65536))
    expect([f, await vhdFormat.probe(head, r), await vdiFormat.probe(head, r)]).toEqual([f, false, false])
    await r.close()
  }
})

async function checkApplyWrite(name: string, fmt: string): Promise<void> {
  expect(await expectApplyWriteMatches(copy(name), fmt, ['write -P 0x42 90M 3M', 'write -P 0x43 30M 4k'])).toBeGreaterThan(0)
}
