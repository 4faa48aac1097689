// VMDK beyond the contract test: a hand-written vmfs descriptor, regions,
// streamOptimized read-only, hostile fields and descriptors (typed errors
// naming file, structure and offset), extents and parents kept inside the
// store, other formats refused, and the map kept current from written grain
// tables.
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openImage } from '../../src/introspect/container'
import { vmdkFormat } from '../../src/introspect/container/vmdk'
import { FileReader } from '../../src/introspect/reader'
import { containerFixtures, expectApplyWriteMatches, expectMapMatchesQemu, expectSameBytes } from '../helpers/qemu'

let dir = ''
let tmp = ''
beforeAll(() => {
  dir = containerFixtures()
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-vmdk-'))
})
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

function copy(name: string, patch?: (b: Buffer) => void, into = tmp): string {
  const b = fs.readFileSync(path.join(dir, name))
  patch?.(b)
  const out = path.join(into, `${Math.random().toString(36).slice(2)}-${name}`)
  fs.writeFileSync(out, b)
  return out
}

function descriptor(extents: string, extra = ''): string {
  return `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="vmfs"\n${extra}\n# Extent description\n${extents}\n\n# The Disk Data Base\nddb.adapterType = "lsilogic"\n`
}

describe('vmdk', () => {
  it('a hand-written vmfs descriptor over a flat file reads like qemu', async () => {
    const d = path.join(tmp, 'vmfs')
    fs.mkdirSync(d)
    fs.copyFileSync(path.join(dir, 'gpt.raw'), path.join(d, 'disk-flat.vmdk'))
    const sectors = fs.statSync(path.join(d, 'disk-flat.vmdk')).size / 512
    fs.writeFileSync(path.join(d, 'disk.vmdk'), descriptor(`RW ${sectors} VMFS "disk-flat.vmdk"`))
    const disk = await openImage(path.join(d, 'disk.vmdk'))
    expect([disk.format, disk.subformat, disk.files.length]).toEqual(['vmdk', 'vmfs', 2])
    expect(disk.regions()).toEqual([{ file: 0, offset: 0, length: fs.statSync(path.join(d, 'disk.vmdk')).size, structure: 'descriptor' }])
    await expectSameBytes(disk, path.join(d, 'disk.vmdk'))
    expectMapMatchesQemu(disk, path.join(d, 'disk.vmdk'))
    await disk.close()
  })

  it('lists header, descriptor, grain directories and tables (both copies); streamOptimized is read-only', async () => {
    const d = await openImage(path.join(dir, 'mbr-monolithicSparse.vmdk'))
    expect([...new Set(d.regions().map((r) => r.structure))].sort()).toEqual(['embedded descriptor', 'grain directory', 'grain table', 'redundant grain directory', 'redundant grain table', 'vmdk header'])
    expect(d.readOnlyReason).toBeNull()
    await d.close()
    const s = await openImage(path.join(dir, 'gpt-streamOptimized.vmdk'))
    expect(s.readOnlyReason).toMatch(/compressed/)
    await s.close()
    const two = await openImage(path.join(dir, 'mbr-twoGbMaxExtentSparse.vmdk'))
    expect(two.files.map((f) => path.basename(f))).toEqual(['mbr-twoGbMaxExtentSparse.vmdk', 'mbr-twoGbMaxExtentSparse-s001.vmdk'])
    await two.close()
  })

  it('hostile headers and descriptors are typed errors naming structure and offset', async () => {
    const sparse = 'mbr-monolithicSparse.vmdk'
    const raw = fs.readFileSync(path.join(dir, sparse))
    const gdSector = Number(raw.readBigUInt64LE(56))
    await expect(openImage(copy(sparse, (b) => b.writeUInt32LE(9, 4)))).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/vmdk header @4: version 9/) })
    await expect(openImage(copy(sparse, (b) => b.writeBigUInt64LE(100n, 20)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/vmdk header @20: grainSize 100 sectors is not a power of two/) })
    // A grain directory larger than the file (capacity inflated).
    await expect(openImage(copy(sparse, (b) => b.writeBigUInt64LE(1n << 40n, 12)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/grain directory @\d+: grain directory of \d+ entries at \d+ does not fit/) })
    // A GD entry past EOF.
    await expect(openImage(copy(sparse, (b) => b.writeUInt32LE(0x7fffffff, gdSector * 512)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(new RegExp(`grain directory #0 @${gdSector * 512}: entry 0 points at sector 2147483647, past the end`)) })
    // Bad magic: not this format (a raw probe may then refuse it too).
    const r = await FileReader.open(copy(sparse, (b) => b.write('XXXX', 0)))
    expect(await vmdkFormat.probe(await r.read(0, 4096), r)).toBe(false)
    await r.close()
    // Descriptors: an extent outside the store, a missing extent, a missing parent, an oversized file.
    const d = path.join(tmp, 'desc')
    fs.mkdirSync(d)
    fs.writeFileSync(path.join(d, 'escape.vmdk'), descriptor('RW 2048 FLAT "../../../../etc/passwd" 0'))
    await expect(openImage(path.join(d, 'escape.vmdk'))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/extent 1 ".*\/etc\/passwd" is outside the store/) })
    fs.writeFileSync(path.join(d, 'missing.vmdk'), descriptor('RW 2048 FLAT "nothere-flat.vmdk" 0'))
    await expect(openImage(path.join(d, 'missing.vmdk'))).rejects.toMatchObject({ code: 'IO', message: expect.stringMatching(/extent 1 "nothere-flat.vmdk" does not exist/) })
    fs.copyFileSync(path.join(dir, 'mbr.raw'), path.join(d, 'x-flat.vmdk'))
    fs.writeFileSync(path.join(d, 'orphan.vmdk'), descriptor('RW 2048 FLAT "x-flat.vmdk" 0', 'parentFileNameHint="gone.vmdk"').replace('parentCID=ffffffff', 'parentCID=0badf00d'))
    await expect(openImage(path.join(d, 'orphan.vmdk'))).rejects.toMatchObject({ code: 'IO', message: expect.stringMatching(/parent "gone.vmdk" does not exist/) })
    fs.writeFileSync(path.join(d, 'huge.vmdk'), descriptor('RW 2048 FLAT "x-flat.vmdk" 0') + '#'.repeat(70 << 10))
    await expect(openImage(path.join(d, 'huge.vmdk'))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/descriptor file of \d+ bytes is larger than 65536/) })
    fs.writeFileSync(path.join(d, 'short.vmdk'), descriptor('RW 999999 FLAT "x-flat.vmdk" 0'))
    await expect(openImage(path.join(d, 'short.vmdk'))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/extent 1 .* runs past its/) })
  })

  it('other formats are not VMDK', async () => {
    for (const f of ['mbr.raw', 'mbr-v3.qcow2', 'mbr-dynamic.vhd', 'mbr-dynamic.vdi', 'random.bin', 'notes.txt']) {
      const r = await FileReader.open(path.join(dir, f))
      expect(await vmdkFormat.probe(await r.read(0, Math.min(r.size, 65536)), r)).toBe(false)
      await r.close()
    }
  })

  it('applyWrite: the grain-table writes of qemu allocating grains keep the map equal to a fresh open and to qemu-img map', async () => {
    expect(await expectApplyWriteMatches(copy('mbr-monolithicSparse.vmdk'), 'vmdk', ['write -P 0x42 90M 200k', 'write -P 0x43 3M 4k'])).toBeGreaterThan(0)
  })
})
