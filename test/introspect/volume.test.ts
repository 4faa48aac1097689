// Volumes against independent oracles on real images (scripts/fixtures/volumes.sh):
// sfdisk --json (MBR with logical partitions and one at sector 63), sgdisk -i
// (GPT GUIDs and names, 512- and 4096-byte sectors), lvm's own lvs/pvs
// reports (LVs in a whole-disk PV, in an MBR partition, and over two PVs in
// two GPT partitions, one LV in two segments); content by magic. Mutations:
// CRC damage falls back to the backup GPT, both copies damaged or an EBR loop
// or a partition past the end are typed errors naming the structure and byte
// offset, LVM damage is a warning, and every fixture is "not this format" to
// the parsers of the other kinds.
import { execFileSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import zlib from 'zlib'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { IntrospectError } from '../../src/introspect/errors'
import { BufferReader, FileReader, type Reader } from '../../src/introspect/reader'
import { readVolumes, volumeReader, type Volume } from '../../src/introspect/volume'
import { contentOf } from '../../src/introspect/volume/content'
import { readGpt } from '../../src/introspect/volume/gpt'
import { lvmCrc, parseLvmText, readLvmPv } from '../../src/introspect/volume/lvm'
import { readMbr } from '../../src/introspect/volume/mbr'
import { ROOT } from '../helpers/cli'

const DIR = path.join(ROOT, '.cache', 'fixtures', 'volumes')
const fx = (name: string) => path.join(DIR, name)
let tmp = ''
beforeAll(() => {
  execFileSync('bash', [path.join(ROOT, 'scripts', 'fixtures', 'volumes.sh')], { stdio: ['ignore', 'inherit', 'inherit'] })
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-vol-'))
})
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true })
})

/** A fixture (a path) or a patched copy of one (a Buffer). */
async function withFile<T>(file: string | Buffer, f: (r: Reader) => Promise<T>): Promise<T> {
  if (Buffer.isBuffer(file)) return f(new BufferReader(file, 'patched'))
  const r = await FileReader.open(file)
  try {
    return await f(r)
  } finally {
    await r.close()
  }
}
const layoutOf = (file: string | Buffer) => withFile(file, readVolumes)

const pristine = new Map<string, Buffer>()
/** A copy of fixture `name` with `patch` applied, in memory. */
function mutated(name: string, patch: (b: Buffer) => void): Buffer {
  if (!pristine.has(name)) pristine.set(name, fs.readFileSync(fx(name)))
  const b = Buffer.from(pristine.get(name)!)
  patch(b)
  return b
}

async function expectSameBytes(file: string, v: Volume, at: number, length: number) {
  const disk = fs.readFileSync(file)
  const want = Buffer.concat(
    v.segments.flatMap((s) => {
      const lo = Math.max(at, s.volumeOffset)
      const hi = Math.min(at + length, s.volumeOffset + s.length)
      return hi > lo ? [disk.subarray(s.diskOffset + lo - s.volumeOffset, s.diskOffset + hi - s.volumeOffset)] : []
    }),
  )
  expect(want.length).toBe(length)
  expect(await withFile(file, (r) => volumeReader(r, v).read(at, length))).toEqual(want)
}

const EVERY = ['mbr.raw', 'gpt.raw', 'gpt4k.raw', 'bare-ext4.raw', 'bare-vfat.raw', 'bare-xfs.raw', 'lvm.raw', 'mbr-lvm.raw', 'lvm-two-pv.raw']

describe('MBR', () => {
  it('equals sfdisk --json: 3 primaries (one at sector 63), the extended one and 3 logicals; content by magic; EBRs are regions', async () => {
    const file = fx('mbr.raw')
    const oracle = JSON.parse(execFileSync('sfdisk', ['--json', file], { encoding: 'utf8' })).partitiontable.partitions as { node: string; start: number; size: number; type: string }[]
    const l = await layoutOf(file)
    expect(l.scheme).toBe('mbr')
    expect(l.warnings).toEqual([])
    expect(l.volumes.map((v) => [v.index, v.start / 512, v.size / 512, parseInt(v.type, 16)])).toEqual(
      oracle.map((p) => [Number(/(\d+)$/.exec(p.node)![1]), p.start, p.size, parseInt(p.type, 16)]),
    )
    expect(oracle[0].start).toBe(63)
    expect(l.volumes.map((v) => v.type)).toEqual(['0x83', '0x83', '0x0c', '0x05', '0x82', '0x83', '0x83'])
    expect(l.volumes.map((v) => v.content)).toEqual(['ext2', 'ext4', 'vfat', 'extended', 'swap', 'ext3', 'ext4'])
    for (const v of l.volumes) {
      expect(v).toMatchObject({ scheme: 'mbr', name: '', segments: [{ volumeOffset: 0, diskOffset: v.start, length: v.size }] })
      expect(v.parent).toBeUndefined()
    }
    // sfdisk puts each EBR in the sector before its logical partition, the first at the extended partition's start.
    const logical = l.volumes.filter((v) => v.index >= 5)
    expect(l.regions).toEqual([
      { offset: 0, length: 512, structure: 'MBR' },
      { offset: l.volumes[3].start, length: 512, structure: 'EBR' },
      ...logical.slice(1).map((v) => ({ offset: v.start - 512, length: 512, structure: 'EBR' })),
    ])
    await expectSameBytes(file, l.volumes[0], 1000, 3000)
    await expectSameBytes(file, l.volumes[6], l.volumes[6].size - 4096, 4096)
  })

  it('an EBR that points back to itself is a CorruptError naming the EBR and its byte offset, not a hang', async () => {
    const l = await layoutOf(fx('mbr.raw'))
    const ext = l.volumes[3]
    const second = l.regions.filter((r) => r.structure === 'EBR')[1].offset
    // The second EBR's "next" entry: the second EBR itself (relative to the extended partition).
    const file = mutated('mbr.raw', (b) => b.writeUInt32LE((second - ext.start) / 512, second + 446 + 16 + 8))
    const t0 = Date.now()
    await expect(layoutOf(file)).rejects.toMatchObject({ code: 'CORRUPT', context: { structure: 'EBR', offset: second }, message: expect.stringMatching(/EBR chain loops back/) })
    expect(Date.now() - t0).toBeLessThan(2000)
    // The last EBR pointing at the first: a longer cycle.
    const last = l.regions.filter((r) => r.structure === 'EBR')[2].offset
    const cycle = mutated('mbr.raw', (b) => {
      b.writeUInt8(0x05, last + 446 + 16 + 4)
      b.writeUInt32LE(0, last + 446 + 16 + 8)
      b.writeUInt32LE(2048, last + 446 + 16 + 12)
    })
    await expect(layoutOf(cycle)).rejects.toMatchObject({ code: 'CORRUPT', context: { structure: 'EBR', offset: ext.start } })
  })

  it('a chain of more than 128 EBRs is cut off with a CorruptError', async () => {
    const disk = Buffer.alloc(512 * 400)
    const entry = (sector: number, slot: number, type: number, lba: number, count: number) => {
      const o = sector * 512 + 446 + slot * 16
      disk.writeUInt8(type, o + 4)
      disk.writeUInt32LE(lba, o + 8)
      disk.writeUInt32LE(count, o + 12)
      disk.writeUInt16LE(0xaa55, sector * 512 + 510)
    }
    entry(0, 0, 0x05, 10, 300)
    for (let k = 0; k < 300; k++) {
      entry(10 + k, 0, 0x83, 0, 1)
      if (k < 299) entry(10 + k, 1, 0x05, k + 1, 1)
    }
    await expect(readMbr(new BufferReader(disk, 'chain'))).rejects.toMatchObject({ code: 'CORRUPT', context: { structure: 'EBR', offset: (10 + 128) * 512 }, message: expect.stringMatching(/at most 128 EBRs/) })
  })

  it('a partition past the end of the disk is a CorruptError naming the partition (primary and logical)', async () => {
    const primary = mutated('mbr.raw', (b) => b.writeUInt32LE(0x7fffffff, 446 + 16 + 12))
    await expect(layoutOf(primary)).rejects.toMatchObject({ code: 'CORRUPT', context: { structure: 'MBR', object: 2, offset: 462 }, message: expect.stringMatching(/partition 2: expected sectors 22528\+2147483647 to end within the disk's 196608 sectors/) })
    const l = await layoutOf(fx('mbr.raw'))
    const ebr = l.regions.filter((r) => r.structure === 'EBR')[1].offset
    const logical = mutated('mbr.raw', (b) => b.writeUInt32LE(1 << 20, ebr + 446 + 12))
    await expect(layoutOf(logical)).rejects.toMatchObject({ code: 'CORRUPT', context: { structure: 'EBR', object: 6, offset: ebr + 446 } })
  })
})

/** sgdisk -i output → the fields the tests compare. */
function sgdiskInfo(text: string) {
  const get = (k: string) => new RegExp(`${k}: (.*)`).exec(text)![1].trim()
  return {
    type: get('Partition GUID code').split(' ')[0].toLowerCase(),
    uuid: get('Partition unique GUID').toLowerCase(),
    first: Number(get('First sector').split(' ')[0]),
    last: Number(get('Last sector').split(' ')[0]),
    name: get('Partition name').replace(/^'|'$/g, ''),
  }
}

/** Rewrites entry `index` (1-based) in both GPT copies of `b` and fixes every CRC, as a partitioning tool would. */
function patchGptEntry(b: Buffer, ss: number, index: number, patch: (entry: Buffer) => void) {
  const primary = ss
  const backup = Number(b.readBigUInt64LE(primary + 0x20)) * ss
  for (const h of [primary, backup]) {
    const arr = Number(b.readBigUInt64LE(h + 0x48)) * ss
    const n = b.readUInt32LE(h + 0x50)
    const size = b.readUInt32LE(h + 0x54)
    patch(b.subarray(arr + (index - 1) * size, arr + index * size))
    b.writeUInt32LE(zlib.crc32(b.subarray(arr, arr + n * size)), h + 0x58)
    fixHeaderCrc(b, h)
  }
}
function fixHeaderCrc(b: Buffer, h: number) {
  b.writeUInt32LE(0, h + 0x10)
  b.writeUInt32LE(zlib.crc32(b.subarray(h, h + b.readUInt32LE(h + 0x0c))), h + 0x10)
}

describe('GPT', () => {
  it('equals sgdisk -i: starts, sizes, type and unique GUIDs, names (one not ASCII), content; headers and arrays are regions', async () => {
    const file = fx('gpt.raw')
    const size = fs.statSync(file).size
    const l = await layoutOf(file)
    expect(l.scheme).toBe('gpt')
    expect(l.warnings).toEqual([])
    expect(l.volumes.map((v) => v.index)).toEqual([1, 2, 3, 4])
    for (const v of l.volumes) {
      const o = sgdiskInfo(execFileSync('sgdisk', ['-i', String(v.index), file], { encoding: 'utf8' }))
      expect({ type: v.type, uuid: v.uuid, start: v.start, size: v.size, name: v.name }).toEqual({ type: o.type, uuid: o.uuid, start: o.first * 512, size: (o.last - o.first + 1) * 512, name: o.name })
      expect(v.segments).toEqual([{ volumeOffset: 0, diskOffset: v.start, length: v.size }])
    }
    expect(l.volumes.map((v) => [v.name, v.content])).toEqual([
      ['root', 'ext4'],
      ['données', 'vfat'],
      ['swap', 'swap'],
      ['data', 'ext2'],
    ])
    const p = execFileSync('sgdisk', ['-p', file], { encoding: 'utf8' })
    const [, a, z] = /Main partition table begins at sector (\d+) and ends at sector (\d+)/.exec(p)!
    expect(l.regions).toEqual([
      { offset: 0, length: 512, structure: 'protective MBR' },
      { offset: 512, length: 512, structure: 'GPT primary header' },
      { offset: Number(a) * 512, length: (Number(z) - Number(a) + 1) * 512, structure: 'GPT primary entry array' },
      { offset: size - 512 - 128 * 128, length: 128 * 128, structure: 'GPT backup entry array' },
      { offset: size - 512, length: 512, structure: 'GPT backup header' },
    ])
    await expectSameBytes(file, l.volumes[1], 0, 8192)
  })

  it('4096-byte sectors: equals the sgdisk report made on a 4 KiB loop device', async () => {
    const file = fx('gpt4k.raw')
    const oracle = fs.readFileSync(`${file}.sgdisk`, 'utf8').split(/^=== \d+$/m).slice(1).map(sgdiskInfo)
    const l = await layoutOf(file)
    expect(l.scheme).toBe('gpt')
    expect(l.volumes.map((v) => ({ type: v.type, uuid: v.uuid, start: v.start, size: v.size, name: v.name }))).toEqual(
      oracle.map((o) => ({ type: o.type, uuid: o.uuid, start: o.first * 4096, size: (o.last - o.first + 1) * 4096, name: o.name })),
    )
    expect(l.volumes[0].content).toBe('ext4')
    expect((await withFile(file, readGpt)).sectorSize).toBe(4096)
    expect(l.regions.find((r) => r.structure === 'GPT primary header')).toEqual({ offset: 4096, length: 4096, structure: 'GPT primary header' })
  })

  it('a damaged primary header or entry array falls back to the backup with a warning; a damaged backup is a warning', async () => {
    const good = await layoutOf(fx('gpt.raw'))
    const size = fs.statSync(fx('gpt.raw')).size
    for (const [patch, why] of [
      [(b: Buffer) => (b[512 + 0x18] ^= 1), /GPT header #primary @512: expected header CRC32 0x[0-9a-f]+, saw 0x[0-9a-f]+/],
      [(b: Buffer) => (b[1024 + 0x38] ^= 1), /GPT entry array #primary @1024: expected entry array CRC32/],
    ] as const) {
      const l = await layoutOf(mutated('gpt.raw', patch))
      expect(l.volumes).toEqual(good.volumes)
      expect(l.warnings).toEqual([expect.stringMatching(new RegExp(`primary GPT unusable .*${why.source}.*; using the backup at LBA ${size / 512 - 1}`))])
    }
    const backupBad = await layoutOf(mutated('gpt.raw', (b) => (b[size - 512 + 0x20] ^= 1)))
    expect(backupBad.volumes).toEqual(good.volumes)
    expect(backupBad.warnings).toEqual([expect.stringMatching(new RegExp(`backup GPT unusable .*GPT header #backup @${size - 512}: expected header CRC32`))])
  })

  it('both headers damaged is a CorruptError naming the GPT header and both byte offsets; a protective MBR without any GPT is one too', async () => {
    const size = fs.statSync(fx('gpt.raw')).size
    const both = mutated('gpt.raw', (b) => {
      b[512 + 0x18] ^= 1
      b[size - 512 + 0x18] ^= 1
    })
    const err = await layoutOf(both).catch((e) => e)
    expect(err).toMatchObject({ code: 'CORRUPT', context: { layer: 'gpt', structure: 'GPT header', offset: 512 } })
    expect(err.message).toMatch(new RegExp(`: no usable GPT: primary: gpt GPT header #primary @512: expected header CRC32 .*; backup at byte ${size - 512}: gpt GPT header #backup @${size - 512}: expected header CRC32`))
    const none = mutated('gpt.raw', (b) => {
      b.fill(0, 512, 1024)
      b.fill(0, size - 512)
    })
    await expect(layoutOf(none)).rejects.toMatchObject({ code: 'CORRUPT', context: { structure: 'GPT header' }, message: expect.stringMatching(/expected a GPT header .* saw none/) })
  })

  it('hostile header fields with valid CRCs: entry count, entry size, my_lba, usable range; each copy refused on its own', async () => {
    const size = fs.statSync(fx('gpt.raw')).size
    const cases: [(b: Buffer, h: number) => void, RegExp][] = [
      [(b, h) => b.writeUInt32LE(1 << 30, h + 0x50), /expected at most 1024 partition entries, saw 1073741824/],
      [(b, h) => b.writeUInt32LE(100, h + 0x54), /expected an entry size that is a multiple of 8 in 128..4096, saw 100/],
      [(b, h) => b.writeUInt32LE(132, h + 0x54), /saw 132/],
      [(b, h) => b.writeUInt32LE(8192, h + 0x54), /saw 8192/],
      [(b, h) => b.writeBigUInt64LE(7n, h + 0x18), /expected my_lba \d+, saw 7/],
      [(b, h) => b.writeBigUInt64LE(1n << 40n, h + 0x30), /expected usable LBAs 34..1099511627776 within the disk's 196608 sectors/],
      [(b, h) => b.writeBigUInt64LE(1n << 62n, h + 0x48), /partition_entry_lba 4611686018427387904 is out of range/],
      [(b, h) => b.writeBigUInt64LE(196600n, h + 0x48), /expected the entry array \(LBA 196600/],
    ]
    for (const [patch, why] of cases) {
      const one = await layoutOf(mutated('gpt.raw', (b) => (patch(b, 512), fixHeaderCrc(b, 512))))
      expect(one.volumes.map((v) => v.name)).toEqual(['root', 'données', 'swap', 'data'])
      expect(one.warnings[0]).toMatch(why)
      const both = mutated('gpt.raw', (b) => {
        for (const h of [512, size - 512]) {
          patch(b, h)
          fixHeaderCrc(b, h)
        }
      })
      await expect(layoutOf(both)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(why) })
    }
  })

  it('a partition past the end of the disk is a CorruptError naming the partition index', async () => {
    const file = mutated('gpt.raw', (b) => patchGptEntry(b, 512, 3, (e) => e.writeBigUInt64LE(1n << 33n, 0x28)))
    await expect(layoutOf(file)).rejects.toMatchObject({
      code: 'CORRUPT',
      context: { structure: 'GPT partition entry', object: 3, offset: 1024 + 2 * 128 },
      message: expect.stringMatching(/no usable GPT: primary: .*partition 3: expected LBAs \d+..8589934592 within the disk's 196608 sectors; backup at byte/),
    })
    const reversed = mutated('gpt.raw', (b) => patchGptEntry(b, 512, 2, (e) => e.writeBigUInt64LE(5n, 0x28)))
    await expect(withFile(reversed, readGpt)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/partition 2: expected LBAs 51207..5/) })
  })

  it('a stale backup GPT at the end of an MBR disk does not make it GPT (the protective MBR decides)', async () => {
    const gptTail = fs.readFileSync(fx('gpt.raw')).subarray(-512 - 128 * 128)
    const file = mutated('mbr.raw', (b) => gptTail.copy(b, b.length - gptTail.length))
    const l = await layoutOf(file)
    expect(l.scheme).toBe('mbr')
    expect(l.volumes.length).toBe(7)
    await expect(withFile(file, readGpt)).rejects.toMatchObject({ code: 'NOT_THIS_FORMAT' })
  })
})

interface LvmOracle {
  segs: Record<string, string>[]
  pvs: Record<string, string>[]
  /** loop device → start sector of the PV on the disk. */
  devs: Map<string, number>
}
function lvmOracle(file: string): LvmOracle {
  return {
    segs: JSON.parse(fs.readFileSync(`${file}.lvs.json`, 'utf8')).report[0].seg,
    pvs: JSON.parse(fs.readFileSync(`${file}.pvs.json`, 'utf8')).report[0].pv,
    devs: new Map(
      fs
        .readFileSync(`${file}.devs`, 'utf8')
        .trim()
        .split('\n')
        .map((l) => l.split(' '))
        .map(([d, s]) => [d, Number(s)]),
    ),
  }
}
const bytes = (s: string) => Number(s.replace(/B$/, ''))

describe('LVM2', () => {
  for (const name of ['lvm.raw', 'mbr-lvm.raw', 'lvm-two-pv.raw']) {
    it(`${name}: PVs and linear LVs equal pvs and lvs --segments (disk offsets, two-segment LVs, ids, parents); metadata is regions`, async () => {
      const file = fx(name)
      const o = lvmOracle(file)
      const l = await layoutOf(file)
      // One lvm-pv volume per PV, where the loop device started.
      const holders = l.volumes.filter((v) => v.content === 'lvm-pv')
      expect(holders.map((v) => v.start).sort((a, b) => a - b)).toEqual([...o.devs.values()].map((s) => s * 512).sort((a, b) => a - b))
      const holderOf = (dev: string) => holders.find((v) => v.start === o.devs.get(dev)! * 512)!
      const pvOf = (dev: string) => o.pvs.find((p) => p.pv_name === dev)!
      for (const p of o.pvs) {
        const h = holderOf(p.pv_name)
        expect(l.regions).toContainEqual({ offset: h.start + 512, length: 512, structure: 'LVM label' })
        expect(l.regions).toContainEqual({ offset: h.start + 4096, length: bytes(p.pv_mda_size), structure: 'LVM metadata area' })
        expect(h.size).toBe(bytes(p.dev_size))
        expect((await withFile(file, (r) => readLvmPv(volumeReader(r, h)))).uuid).toBe(p.pv_uuid)
      }
      const expected = new Map<string, { segments: Volume['segments']; uuid: string; parent?: number }>()
      const nonLinear: string[] = []
      for (const s of o.segs) {
        const full = `${s.vg_name}/${s.lv_name}`
        if (s.segtype !== 'linear') {
          nonLinear.push(`${full}:${s.segtype}:${s.stripes}`)
          continue
        }
        const [dev, range] = s.seg_pe_ranges.split(':')
        const pe = Number(range.split('-')[0])
        const holder = holderOf(dev)
        const e = expected.get(full) ?? { segments: [], uuid: s.lv_uuid, ...(holder.scheme === 'none' ? {} : { parent: holder.index }) }
        e.segments.push({ volumeOffset: bytes(s.seg_start), diskOffset: holder.start + bytes(pvOf(dev).pe_start) + pe * bytes(pvOf(dev).vg_extent_size), length: bytes(s.seg_size) })
        expected.set(full, e)
      }
      const lvs = l.volumes.filter((v) => v.scheme === 'lvm')
      expect(new Map(lvs.map((v) => [v.name, { segments: v.segments, uuid: v.uuid, ...(v.parent !== undefined ? { parent: v.parent } : {}) }]))).toEqual(expected)
      for (const v of lvs) {
        expect(v).toMatchObject({ type: 'lvm-linear', start: v.segments[0].diskOffset, size: v.segments.reduce((a, s) => a + s.length, 0) })
      }
      // Indexes are unique in the layout: LVs follow the partitions.
      expect(new Set(l.volumes.map((v) => v.index)).size).toBe(l.volumes.length)
      expect(lvs.map((v) => v.index)).toEqual(lvs.map((_, i) => Math.max(...holders.map((h) => h.index)) + 1 + i))
      // Every LV not mapped is named in a warning, with its type.
      expect(l.warnings).toEqual(nonLinear.map((n) => expect.stringContaining(`LV ${n.split(':')[0]} has segment type "${n.split(':')[1]}" with ${n.split(':')[2]} stripes`)))
      // A multi-segment LV reads across its segment boundary like the disk does.
      const multi = lvs.find((v) => v.segments.length > 1)!
      expect(multi).toBeDefined()
      await expectSameBytes(file, multi, multi.segments[1].volumeOffset - 4096, 8192)
    })
  }

  it('an ext4 made inside an LV is found there, and the whole-disk PV makes the layout scheme lvm', async () => {
    for (const name of ['lvm.raw', 'mbr-lvm.raw']) {
      const l = await layoutOf(fx(name))
      expect(l.volumes.filter((v) => v.scheme === 'lvm').map((v) => [v.name.split('/')[1], v.content])).toEqual([
        ['lv1', 'unknown'],
        ['lv2', 'ext4'],
        ['lv3', 'unknown'],
      ])
      expect(l.scheme).toBe(name === 'lvm.raw' ? 'lvm' : 'mbr')
    }
  })

  it('a PV of a VG missing from the disk: the LVs with extents there are named in a warning, the others stay', async () => {
    const l = await layoutOf(fx('lvm-two-pv.raw'))
    const pvB = l.volumes.find((v) => v.name === 'pv-b')!
    const damaged = await layoutOf(mutated('lvm-two-pv.raw', (b) => (b[pvB.start + 512 + 0x30] ^= 1)))
    expect(damaged.volumes.filter((v) => v.scheme === 'lvm').map((v) => v.name)).toEqual(['vmdivol3/lv1'])
    expect(damaged.warnings).toEqual([
      expect.stringMatching(new RegExp(`LVM PV in volume 2 not used: .*label @${512}: expected label checksum 0x[0-9a-f]+, saw 0x[0-9a-f]+`)),
      expect.stringMatching(/LV vmdivol3\/span has extents on PV .* which is not on this disk/),
      expect.stringMatching(/LV vmdivol3\/striped has segment type "striped" with 2 stripes/),
    ])
  })
})

/** The whole-disk PV of lvm.raw with its metadata text replaced (sizes and checksums fixed as lvm would write them). */
function lvmWithText(edit: (text: string) => string): string {
  return mutated('lvm.raw', (b) => {
    const mda = 4096
    const tOff = Number(b.readBigUInt64LE(mda + 0x28))
    const tSize = Number(b.readBigUInt64LE(mda + 0x30))
    const text = Buffer.from(edit(b.toString('latin1', mda + tOff, mda + tOff + tSize).replace(/\0+$/, '')) + '\0', 'latin1')
    b.fill(0, mda + tOff, mda + tOff + Math.max(tSize, text.length))
    text.copy(b, mda + tOff)
    b.writeBigUInt64LE(BigInt(text.length), mda + 0x30)
    b.writeUInt32LE(lvmCrc(text), mda + 0x38)
    b.writeUInt32LE(lvmCrc(b.subarray(mda + 4, mda + 512)), mda)
  })
}

describe('LVM2 damage and hostile metadata', () => {
  it('checksums: label, mda_header, metadata text; each damage names its structure and offset, the PV stays a volume', async () => {
    const tOff = await withFile(fx('lvm.raw'), async (r) => Number((await r.read(4096 + 0x28, 8)).readBigUInt64LE(0)))
    for (const [patch, why] of [
      [(b: Buffer) => (b[512 + 0x30] ^= 1), /label @512: expected label checksum/],
      [(b: Buffer) => (b[4096 + 0x40] ^= 1), /mda_header @4096: expected checksum/],
      [(b: Buffer) => (b[4096 + 0x05] ^= 1), /mda_header @4096: expected magic/],
      [(b: Buffer) => (b[4096 + tOff + 10] ^= 1), /raw_locn @4136: expected metadata text checksum/],
    ] as const) {
      const l = await layoutOf(mutated('lvm.raw', patch))
      expect(l.volumes).toMatchObject([{ index: 1, content: 'lvm-pv', scheme: 'none' }])
      expect(l.warnings).toEqual([expect.stringMatching(new RegExp(`LVM PV in the whole disk not used: .*${why.source}`))])
    }
  })

  it('a segment type other than linear (raid1 here) is a warning naming the LV and type; the linear LVs stay', async () => {
    const file = lvmWithText((t) => t.replace(/(lv2 \{[\s\S]*?type = )"striped"/, '$1"raid1"'))
    const l = await layoutOf(file)
    expect(l.volumes.filter((v) => v.scheme === 'lvm').map((v) => v.name)).toEqual(['vmdivol1/lv1', 'vmdivol1/lv3'])
    expect(l.warnings).toEqual([expect.stringMatching(/LV vmdivol1\/lv2 has segment type "raid1": only linear LVs are mapped/)])
  })

  it('LV numbers out of bounds, gaps between segments and hidden LVs are warnings naming the LV', async () => {
    const cases: [(t: string) => string, RegExp][] = [
      [(t) => t.replace(/(lv3 \{[\s\S]*?extent_count = )\d+/, '$1100000'), /lvm metadata text #vmdivol1\/lv3: segment1: expected extents \d+\+100000 within pv0's \d+ extents/],
      [(t) => t.replace(/(lv3 \{[\s\S]*?stripes = \[\s*"pv0", )\d+/, '$19007199254740993'), /lv3: segment1: expected whole numbers/],
      [(t) => t.replace(/(lv1 \{[\s\S]*?segment2 \{\s*start_extent = )\d+/, '$199'), /lv1: expected a segment starting at extent 8, saw one at 99/],
      [(t) => t.replace(/(lv3 \{[\s\S]*?stripes = \[\s*)"pv0"/, '$1"pv7"'), /lv3: segment1: expected a PV of the VG, saw "pv7"/],
      [(t) => t.replace(/(lv3 \{[\s\S]*?status = \[)"READ", "WRITE", "VISIBLE"\]/, '$1"READ", "WRITE"]'), /LV vmdivol1\/lv3 is hidden/],
    ]
    for (const [edit, why] of cases) {
      const l = await layoutOf(lvmWithText(edit))
      expect(l.warnings).toEqual([expect.stringMatching(why)])
      expect(l.volumes.filter((v) => v.scheme === 'lvm').map((v) => v.name)).toHaveLength(2)
    }
  })

  it('metadata text: parsed without eval, nesting and size bounded, a second VG section or no seqno refused', async () => {
    expect(parseLvmText('vg {\n seqno = 3 # c\n lv { s = ["a\\"b", 1, -2] }\n}\nx = "${process.exit(1)}"', { file: 'x', offset: 0 })).toEqual({ vg: { seqno: 3, lv: { s: ['a"b', 1, -2] } }, x: '${process.exit(1)}' })
    expect(() => parseLvmText('a { '.repeat(40), { file: 'x', offset: 7 })).toThrow(/nest too deep/)
    expect(() => parseLvmText('a = '.concat('['.repeat(40)), { file: 'x', offset: 7 })).toThrow(/lists nest too deep/)
    expect(() => parseLvmText('a = "x', { file: 'x', offset: 7 })).toThrow(/unterminated string/)
    expect(() => parseLvmText('a = x', { file: 'x', offset: 7 })).toThrow(/expected a value at character 4/)
    expect(() => parseLvmText('a = 1 }', { file: 'x', offset: 7 })).toThrow(/unexpected \}/)
    expect(() => parseLvmText(`a = "${'x'.repeat(1 << 20)}"`, { file: 'x', offset: 7 })).toThrow(/expected at most 1048576 bytes/)
    const deep = await layoutOf(lvmWithText((t) => `${'n { '.repeat(30)}${'} '.repeat(30)}\n${t}`))
    expect(deep.warnings).toEqual([expect.stringMatching(/metadata text @\d+: metadata text: sections nest too deep/)])
    const two = await layoutOf(lvmWithText((t) => `${t}\nother {\nseqno = 9\n}\n`))
    expect(two.warnings).toEqual([expect.stringMatching(/expected one volume group section, saw 2/)])
    const noSeq = await layoutOf(lvmWithText((t) => t.replace(/seqno = \d+/, 'seqno = "x"')))
    expect(noSeq.warnings).toEqual([expect.stringMatching(/expected a seqno/)])
    const huge = await layoutOf(mutated('lvm.raw', (b) => {
      b.writeBigUInt64LE(2n << 20n, 4096 + 0x30)
      b.writeUInt32LE(lvmCrc(b.subarray(4096 + 4, 4096 + 512)), 4096)
    }))
    expect(huge.warnings).toEqual([expect.stringMatching(/raw_locn @4136: expected text \d+\+2097152 within the 1044480-byte area and at most 1048576 bytes/)])
  })
})

describe('random damage', () => {
  it('random bytes over the tables of every kind of fixture: a layout or a typed error, never a crash or a hang', async () => {
    let seed = 0x5eed
    const rnd = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) % n
    const targets: [string, [number, number][]][] = [
      ['mbr.raw', [[0, 512]]],
      ['gpt.raw', [[0, 2048], [1024 * 1024 * 96 - 1024, 1024]]],
      ['gpt4k.raw', [[0, 12288]]],
      ['lvm.raw', [[0, 1024], [4096, 4096]]],
      ['lvm-two-pv.raw', [[1048576, 1024], [1052672, 512]]],
    ]
    // The EBRs of mbr.raw and the metadata text of lvm.raw are targets too.
    const ebrs = (await layoutOf(fx('mbr.raw'))).regions.filter((r) => r.structure === 'EBR').map((r): [number, number] => [r.offset + 446, 66])
    targets[0][1].push(...ebrs)
    const tOff = 4096 + (await withFile(fx('lvm.raw'), async (r) => Number((await r.read(4096 + 0x28, 8)).readBigUInt64LE(0))))
    targets[3][1].push([tOff, 2048])
    const outcomes = new Map<string, number>()
    for (const [name, ranges] of targets) {
      const b = mutated(name, () => undefined)
      for (let round = 0; round < 60; round++) {
        const [at, len] = ranges[rnd(ranges.length)]
        const saved: [number, number][] = []
        for (let k = 1 + rnd(8); k > 0; k--) {
          const o = at + rnd(len)
          saved.push([o, b[o]])
          b[o] = rnd(4) === 0 ? 0xff : rnd(256)
        }
        const outcome = await readVolumes(new BufferReader(b, name)).then(
          (l) => (l.warnings.length ? 'warned' : 'ok'),
          (e) => {
            if (!(e instanceof IntrospectError)) throw e
            return e.code
          },
        )
        outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1)
        for (const [o, v] of saved.reverse()) b[o] = v
      }
    }
    // readVolumes falls back to a whole-disk volume, so it never answers NotThisFormat; every read is bounds-checked first, so never IO.
    expect([...outcomes.keys()].filter((k) => !['ok', 'warned', 'CORRUPT'].includes(k))).toEqual([])
    expect(outcomes.get('CORRUPT')).toBeGreaterThan(0)
    expect(outcomes.get('warned')).toBeGreaterThan(0)
  })
})

describe('bare disks, content, and the wrong parser', () => {
  it('a bare file system is one whole-disk volume: ext4, vfat (its boot sector is no MBR), xfs', async () => {
    for (const [name, content] of [
      ['bare-ext4.raw', 'ext4'],
      ['bare-vfat.raw', 'vfat'],
      ['bare-xfs.raw', 'xfs'],
    ]) {
      const file = fx(name)
      const size = fs.statSync(file).size
      const l = await layoutOf(file)
      expect(l).toEqual({
        scheme: 'none',
        volumes: [{ index: 1, scheme: 'none', start: 0, size, type: 'disk', name: '', content, segments: [{ volumeOffset: 0, diskOffset: 0, length: size }] }],
        regions: [],
        warnings: [],
      })
    }
  })

  it('ext2/ext3/ext4 by features as blkid tells them apart; a journal device and random bytes are unknown', async () => {
    const blkid = (file: string, v: Volume) => execFileSync('blkid', ['-p', '-o', 'value', '-s', 'TYPE', '-O', String(v.start), file], { encoding: 'utf8' }).trim()
    for (const name of ['mbr.raw', 'gpt.raw']) {
      const l = await layoutOf(fx(name))
      for (const v of l.volumes.filter((x) => /^ext\d$/.test(x.content))) expect(v.content).toBe(blkid(fx(name), v))
    }
    const jdev = path.join(tmp, 'jdev')
    execFileSync('truncate', ['-s', '8M', jdev])
    execFileSync('mke2fs', ['-q', '-F', '-O', 'journal_dev', jdev])
    expect((await layoutOf(jdev)).volumes[0].content).toBe('unknown')
    const random = path.join(tmp, 'random')
    fs.writeFileSync(random, Buffer.from(Array.from({ length: 1 << 16 }, (_, i) => (i * 2654435761) >>> 24)))
    expect(await layoutOf(random)).toMatchObject({ scheme: 'none', volumes: [{ content: 'unknown' }] })
    // NTFS by its OEM id (no mkntfs here: Debian's needs fuse3, which the mount's fuse package excludes).
    const ntfs = Buffer.alloc(8192)
    ntfs.write('NTFS    ', 3, 'latin1')
    expect(contentOf(ntfs)).toBe('ntfs')
  })

  it('every fixture is NotThisFormat to the parsers of the other kinds', async () => {
    const kinds: Record<string, ('mbr' | 'gpt' | 'lvm')[]> = {
      'mbr.raw': ['mbr'],
      'gpt.raw': ['gpt'],
      'gpt4k.raw': ['gpt'],
      'bare-ext4.raw': [],
      'bare-vfat.raw': [],
      'bare-xfs.raw': [],
      'lvm.raw': ['lvm'],
      'mbr-lvm.raw': ['mbr'],
      'lvm-two-pv.raw': ['gpt'],
    }
    expect(Object.keys(kinds)).toEqual(EVERY)
    const parsers = { mbr: readMbr, gpt: readGpt, lvm: readLvmPv } as const
    for (const [name, mine] of Object.entries(kinds)) {
      await withFile(fx(name), async (r) => {
        for (const [kind, parse] of Object.entries(parsers)) {
          const p = (parse as (r: Reader) => Promise<unknown>)(r)
          if (mine.includes(kind as 'mbr')) await expect(p, `${kind} on ${name}`).resolves.toBeDefined()
          else await expect(p, `${kind} on ${name}`).rejects.toMatchObject({ code: 'NOT_THIS_FORMAT' })
        }
      })
    }
  })

  it('volumeReader bounds its reads', async () => {
    const l = await layoutOf(fx('lvm.raw'))
    const lv1 = l.volumes.find((v) => v.name === 'vmdivol1/lv1')!
    await withFile(fx('lvm.raw'), async (r) => {
      await expect(volumeReader(r, lv1).read(lv1.size - 10, 11)).rejects.toMatchObject({ code: 'IO' })
      await expect((async () => volumeReader(r, l.volumes[0]).read(-1, 1))()).rejects.toMatchObject({ code: 'IO' })
    })
  })
})

