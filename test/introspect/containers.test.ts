// The contract every container format meets (STYLE.md habit 5): the same two
// disks as raw and as every subformat qemu-img writes; for each, the whole
// virtual disk read through our map equals `qemu-img convert -O raw`, and our
// guest → file map equals `qemu-img map --output=json`. Plus the probe chain:
// content decides, never the name.
import fs from 'fs'
import os from 'os'
import path from 'path'
import { beforeAll, describe, expect, it } from 'vitest'
import { BlockClass } from '../../src/introspect/classes'
import { openImage } from '../../src/introspect/container'
import { inspectImage } from '../../src/introspect/inspect'
import { FILE_BLOCK } from '../../src/introspect/map/fold'
import type { VirtualDisk } from '../../src/introspect/container/types'
import { containerFixtures, expectMapMatchesQemu, expectSameBytes, qemuInfo } from '../helpers/qemu'

let dir = ''
beforeAll(() => {
  dir = containerFixtures()
})

async function withDisk<T>(name: string, fn: (d: VirtualDisk) => Promise<T>): Promise<T> {
  const d = await openImage(path.join(dir, name))
  try {
    return await fn(d)
  } finally {
    await d.close()
  }
}

interface Case {
  file: string
  format: string
  subformat: string
  /** Map compared only where qemu reports file offsets (streamOptimized: bytes only). */
  map: boolean
}

const CASES: Case[] = []
for (const b of ['mbr', 'gpt']) {
  CASES.push({ file: `${b}.raw`, format: 'raw', subformat: 'flat', map: true })
  for (const [q, sub] of [['v2', 'v2'], ['v3', 'v3'], ['v3-c512', 'v3'], ['v3-c2M', 'v3'], ['compressed', 'v3']]) {
    CASES.push({ file: `${b}-${q}.qcow2`, format: 'qcow2', subformat: sub, map: true })
  }
  for (const v of ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized']) {
    CASES.push({ file: `${b}-${v}.vmdk`, format: 'vmdk', subformat: v, map: v !== 'streamOptimized' })
  }
  for (const v of ['fixed', 'dynamic']) CASES.push({ file: `${b}-${v}.vhd`, format: 'vhd', subformat: v, map: true })
  for (const v of ['static', 'dynamic']) CASES.push({ file: `${b}-${v}.vdi`, format: 'vdi', subformat: v, map: true })
}
CASES.push({ file: 'mbr-delta.qcow2', format: 'qcow2', subformat: 'v3', map: true })
CASES.push({ file: 'mbr-delta2.qcow2', format: 'qcow2', subformat: 'v3', map: true })
CASES.push({ file: 'mbr-delta.vmdk', format: 'vmdk', subformat: 'monolithicSparse', map: true })

describe.each(CASES)('$file', (c) => {
  it('opens with the expected format and reads like qemu', async () => {
    await withDisk(c.file, async (d) => {
      expect([d.format, d.subformat]).toEqual([c.format, c.subformat])
      expect(d.size).toBe(qemuInfo(path.join(dir, c.file))['virtual-size'])
      await expectSameBytes(d, path.join(dir, c.file))
      if (c.map) expectMapMatchesQemu(d, path.join(dir, c.file))
    })
  })
})

/** Guest-level results of the raw twin: volumes and every file system's class runs. */
const rawTruth = new Map<string, { volumes: unknown; fs: unknown[] }>()
async function truthOf(base: string) {
  if (!rawTruth.has(base)) {
    const ins = await inspectImage(path.join(dir, `${base}.raw`))
    rawTruth.set(base, { volumes: ins.report.partitions, fs: ins.filesystems.map((f) => [...f.fs.map.runs()]) })
    await ins.close()
  }
  return rawTruth.get(base)!
}

describe.each(CASES.filter((c) => !c.file.includes('delta')))('through $file', (c) => {
  it('the same volumes and the same class of every fs block as the raw disk; each meta-data byte lands in a meta-data block of its file', async () => {
    const base = c.file.split(/[-.]/)[0]
    const truth = await truthOf(base)
    const ins = await inspectImage(path.join(dir, c.file))
    try {
      expect(ins.report.partitions).toEqual(truth.volumes)
      expect(ins.filesystems.map((f) => [...f.fs.map.runs()])).toEqual(truth.fs)
      const maps = new Map((ins.fileMaps ?? []).map((m) => [m.path, m.map]))
      for (const { volume, fs: efs } of ins.filesystems) {
        const bs = efs.info.blockSize
        for (const [start, count] of efs.map.runs()) {
          for (let g = volume.start + start * bs; g < volume.start + (start + count) * bs; ) {
            const m = ins.disk.mapGuest(g)
            const n = Math.min(m.length, volume.start + (start + count) * bs - g)
            if (m.kind === 'data' || m.kind === 'compressed') {
              const first = m.kind === 'data' ? m.fileOffset : m.fileOffset
              const map = maps.get(ins.disk.files[m.file])!
              expect(map.classOf(Math.floor(first / FILE_BLOCK)), `guest ${g} in ${ins.disk.files[m.file]}`).not.toBe(BlockClass.Data)
            }
            g += Math.min(n, FILE_BLOCK)
          }
        }
      }
    } finally {
      await ins.close()
    }
  })
})

describe('probe chain', () => {
  it('answers "not a disk image" for files with no container, table or file system, whatever their name', async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-probe-'))
    try {
      for (const [src, name] of [
        ['random.bin', 'disk.img'],
        ['notes.txt', 'disk.vmdk'],
        ['random.bin', 'disk.qcow2'],
      ]) {
        fs.copyFileSync(path.join(dir, src), path.join(tmp, name))
        await expect(openImage(path.join(tmp, name))).rejects.toMatchObject({ code: 'NOT_THIS_FORMAT' })
      }
      // A raw disk under a misleading name is still a raw disk.
      fs.copyFileSync(path.join(dir, 'gpt.raw'), path.join(tmp, 'looks.qcow2'))
      const d = await openImage(path.join(tmp, 'looks.qcow2'))
      expect(d.format).toBe('raw')
      await d.close()
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true })
    }
  })

  it('refuses an image outside the store it is opened in', async () => {
    const elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-elsewhere-'))
    try {
      await expect(openImage(path.join(dir, 'gpt.raw'), { storeRoot: elsewhere })).rejects.toThrow(/outside the store/)
    } finally {
      fs.rmSync(elsewhere, { recursive: true, force: true })
    }
  })
})
