// Volumes against independent oracles: sfdisk --json (MBR, with logical
// partitions and one at sector 63), sgdisk -i (GPT GUIDs and names), lvm's
// own lvs/pvs reports kept by the fixture script (LVs in a whole-disk PV and
// in a partition, one LV in two segments); content by magic. Mutations: CRC
// damage falls back to the backup GPT, an EBR loop and a partition past the
// end are typed errors, and every other fixture is "not this format".
import { execFileSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import zlib from 'zlib'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BufferReader, FileReader } from '../../src/introspect/reader'
import { readVolumes, volumeReader } from '../../src/introspect/volume'
import { readGpt } from '../../src/introspect/volume/gpt'
import { lvmCrc, parseLvmText } from '../../src/introspect/volume/lvm'
import { readMbr } from '../../src/introspect/volume/mbr'
import { containerFixtures } from '../helpers/qemu'

let dir = ''
let tmp = ''
beforeAll(() => {
  dir = containerFixtures()
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-vol-'))
})
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

async function layoutOf(file: string) {
  const r = await FileReader.open(file)
  try {
    return await readVolumes(r)
  } finally {
    await r.close()
  }
}

function mutated(name: string, patch: (b: Buffer) => void): string {
  const b = fs.readFileSync(path.join(dir, name))
  patch(b)
  const out = path.join(tmp, `${name}-${Math.random().toString(36).slice(2)}`)
  fs.writeFileSync(out, b)
  return out
}

describe('MBR', () => {
  it('equals sfdisk --json, logical partitions and the sector-63 start included; content by magic', async () => {
    const file = path.join(dir, 'mbr.raw')
    const oracle = JSON.parse(execFileSync('sfdisk', ['--json', file], { encoding: 'utf8' })).partitiontable.partitions as {
      node: string
      start: number
      size: number
      type: string
    }[]
    const l = await layoutOf(file)
    expect(l.scheme).toBe('mbr')
    expect(l.volumes.map((v) => [v.index, v.start / 512, v.size / 512, Number(v.type)])).toEqual(
      oracle.map((p) => [Number(/(\d+)$/.exec(p.node)![1]), p.start, p.size, parseInt(p.type, 16)]),
    )
    expect(l.volumes.map((v) => v.content)).toEqual(['ext2', 'ext4', 'extended', 'vfat', 'swap', 'ext3'])
    expect(l.regions.map((r) => r.structure)).toEqual(['MBR', 'EBR', 'EBR', 'EBR'])
  })

  it('an EBR chain that loops is a CorruptError naming the EBR, not a hang', async () => {
    // The third EBR's "next" entry points back at the first EBR (relative LBA 0 of the extended partition, which is 1 past it: use 2048).
    const l = await layoutOf(path.join(dir, 'mbr.raw'))
    const ebrs = l.regions.filter((r) => r.structure === 'EBR')
    const ext = l.volumes.find((v) => v.content === 'extended')!
    const file = mutated('mbr.raw', (b) => {
      const last = ebrs[2].offset
      b.writeUInt8(0x05, last + 446 + 16 + 4)
      b.writeUInt32LE((ebrs[1].offset - ext.start) / 512, last + 446 + 16 + 8)
      b.writeUInt32LE(2048, last + 446 + 16 + 12)
    })
    await expect(layoutOf(file)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/EBR @35651072: EBR chain loops back to sector 69631/) })
  })

  it('a partition past the end of the disk is a CorruptError naming it', async () => {
    const file = mutated('mbr.raw', (b) => b.writeUInt32LE(0x7fffffff, 446 + 16 + 12))
    await expect(layoutOf(file)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/MBR #2 @462: partition 2 .* ends past the disk/) })
  })
})

describe('GPT', () => {
  it('equals sgdisk: starts, sizes, type and unique GUIDs, names, content', async () => {
    const file = path.join(dir, 'gpt.raw')
    const l = await layoutOf(file)
    expect(l.scheme).toBe('gpt')
    expect(l.warnings).toEqual([])
    for (const v of l.volumes) {
      const info = execFileSync('sgdisk', ['-i', String(v.index), file], { encoding: 'utf8' })
      const get = (k: string) => new RegExp(`${k}: (.*)`).exec(info)![1].trim()
      expect(get('Partition GUID code').split(' ')[0].toLowerCase()).toBe(v.type)
      expect(get('Partition unique GUID').toLowerCase()).toBe(v.uuid)
      expect(Number(get('First sector').split(' ')[0]) * 512).toBe(v.start)
      expect((Number(get('Last sector').split(' ')[0]) + 1) * 512 - v.start).toBe(v.size)
      expect(get('Partition name')).toBe(`'${v.name}'`)
    }
    expect(l.volumes.map((v) => [v.name, v.content])).toEqual([
      ['root', 'ext4'],
      ['efi', 'vfat'],
      ['swap', 'swap'],
      ['data', 'ext4'],
    ])
  })

  it('a damaged primary header falls back to the backup with a warning; both damaged is a CorruptError', async () => {
    const size = fs.statSync(path.join(dir, 'gpt.raw')).size
    const one = mutated('gpt.raw', (b) => (b[512 + 0x18] ^= 1))
    const l = await layoutOf(one)
    expect(l.volumes.map((v) => v.name)).toEqual(['root', 'efi', 'swap', 'data'])
    expect(l.warnings[0]).toMatch(/primary GPT unusable .*header CRC32 expected .*; using the backup/)
    const both = mutated('gpt.raw', (b) => {
      b[512 + 0x18] ^= 1
      b[size - 512 + 0x18] ^= 1
    })
    await expect(layoutOf(both)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(new RegExp(`GPT backup header @${size - 512}: header CRC32`)) })
  })

  it('an entry array with a bad CRC is refused, and huge entry counts are bounded', async () => {
    const bad = mutated('gpt.raw', (b) => (b[1024 + 56] ^= 1))
    const l = await layoutOf(bad)
    expect(l.warnings[0]).toMatch(/entry array CRC32/)
    const huge = Buffer.alloc(1 << 20)
    fs.readFileSync(path.join(dir, 'gpt.raw')).copy(huge, 0, 0, 1024)
    huge.writeUInt32LE(1 << 30, 512 + 0x50)
    huge.writeUInt32LE(0, 512 + 0x10)
    huge.writeUInt32LE(zlib.crc32(huge.subarray(512, 512 + 92)), 512 + 0x10)
    await expect(readGpt(new BufferReader(huge, 'huge'))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/1073741824 partition entries \(at most 1024\)/) })
  })
})

describe('LVM2', () => {
  for (const name of ['lvm.raw', 'mbr-lvm.raw']) {
    it(`${name}: LVs equal lvs --segments and pvs, two-segment LV included; ext4 found inside an LV`, async () => {
      const file = path.join(dir, name)
      const segs = JSON.parse(fs.readFileSync(`${file}.lvs.json`, 'utf8')).report[0].seg as Record<string, string>[]
      const pv = JSON.parse(fs.readFileSync(`${file}.pvs.json`, 'utf8')).report[0].pv[0] as Record<string, string>
      const l = await layoutOf(file)
      const holder = l.volumes.find((v) => v.content === 'lvm-pv')!
      const peStart = Number(pv.pe_start.replace('B', ''))
      const extent = Number(pv.vg_extent_size.replace('B', ''))
      const lvs = l.volumes.filter((v) => v.scheme === 'lvm')
      const expected = new Map<string, { volumeOffset: number; diskOffset: number; length: number }[]>()
      for (const s of segs) {
        const pe = Number(s.seg_pe_ranges.split(':')[1].split('-')[0])
        const list = expected.get(`${s.vg_name}/${s.lv_name}`) ?? []
        list.push({ volumeOffset: Number(s.seg_start.replace('B', '')), diskOffset: holder.start + peStart + pe * extent, length: Number(s.seg_size.replace('B', '')) })
        expected.set(`${s.vg_name}/${s.lv_name}`, list)
        expect(s.segtype).toBe('linear')
      }
      expect(new Map(lvs.map((v) => [v.name, v.segments]))).toEqual(expected)
      expect(lvs.map((v) => v.uuid)).toEqual([...new Set(segs.map((s) => s.lv_uuid))])
      expect(lvs.find((v) => v.name.endsWith('/lv2'))!.content).toBe('ext4')
      if (holder.scheme !== 'none') expect(lvs.every((v) => v.parent === holder.index)).toBe(true)
      // The two-segment LV reads across its segment boundary like the disk does.
      const lv1 = lvs.find((v) => v.name.endsWith('/lv1'))!
      const r = await FileReader.open(file)
      const across = await volumeReader(r, lv1).read(lv1.segments[1].volumeOffset - 512, 1024)
      const disk = fs.readFileSync(file)
      expect(across).toEqual(Buffer.concat([disk.subarray(lv1.segments[0].diskOffset + lv1.segments[0].length - 512, lv1.segments[0].diskOffset + lv1.segments[0].length), disk.subarray(lv1.segments[1].diskOffset, lv1.segments[1].diskOffset + 512)]))
      await r.close()
    })
  }

  it('reports an LV of another segment type by name and serves it as data, keeping the linear ones', async () => {
    // Every copy of the metadata text in the ring buffer: lv2's type "striped" becomes "raid1" (same length, quotes kept).
    const file = mutated('lvm.raw', (b) => {
      const text = b.toString('latin1')
      let at = text.indexOf('lv2 {')
      while (at >= 0) {
        const t = text.indexOf('type = "striped"', at)
        if (t < 0) break
        b.write('type = "raid1"  ', t, 'latin1')
        at = text.indexOf('lv2 {', t)
      }
    })
    const l = await layoutOf(file)
    expect(l.volumes.filter((v) => v.scheme === 'lvm').map((v) => v.name)).toEqual(['vmdifix1/lv1'])
    expect(l.warnings).toEqual([expect.stringMatching(/LV vmdifix1\/lv2 has segment type "raid1".*only linear LVs are mapped/)])
  })

  it('checks the label CRC, reports non-linear segments, and parses text without eval and within bounds', async () => {
    const bad = mutated('lvm.raw', (b) => (b[512 + 40] ^= 1))
    const l = await layoutOf(bad)
    expect(l.volumes.filter((v) => v.scheme === 'lvm')).toEqual([])
    expect(l.warnings[0]).toMatch(/label checksum expected/)
    expect(lvmCrc(Buffer.from('abc'))).not.toBe(0)
    const t = parseLvmText('vg {\n seqno = 3 # c\n lv { s = ["a", 1] }\n}', { file: 'x', offset: 0 })
    expect(t).toEqual({ vg: { seqno: 3, lv: { s: ['a', 1] } } })
    expect(() => parseLvmText('a { '.repeat(40), { file: 'x', offset: 7 })).toThrow(/nest too deep/)
    expect(() => parseLvmText('a = "x', { file: 'x', offset: 7 })).toThrow(/unterminated string/)
  })
})

describe('bare and foreign', () => {
  it('recognises xfs by its magic (mkfs.xfs)', async () => {
    const l = await layoutOf(path.join(dir, 'foreign.raw'))
    expect(l.volumes.map((v) => [v.index, v.content])).toEqual([[1, 'xfs']])
  })

  it('a bare file system is one whole-disk volume; non-disks have no partition table', async () => {
    const ext = path.join(tmp, 'bare.ext4')
    execFileSync('truncate', ['-s', '16M', ext])
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', ext])
    const l = await layoutOf(ext)
    expect(l).toMatchObject({ scheme: 'none', volumes: [{ index: 1, start: 0, content: 'ext4', type: 'disk' }] })
    for (const f of ['random.bin', 'notes.txt', 'mbr-v3.qcow2', 'gpt-dynamic.vdi']) {
      const r = await FileReader.open(path.join(dir, f))
      await expect(readMbr(r)).rejects.toMatchObject({ code: 'NOT_THIS_FORMAT' })
      await expect(readGpt(r)).rejects.toMatchObject({ code: 'NOT_THIS_FORMAT' })
      await r.close()
    }
    const r = await FileReader.open(path.join(dir, 'mbr.raw'))
    await expect(readGpt(r)).rejects.toMatchObject({ code: 'NOT_THIS_FORMAT' })
    await r.close()
  })
})
