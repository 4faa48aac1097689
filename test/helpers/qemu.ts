// Independent oracles for container tests: qemu-img's own view of an image.
import { execFileSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { expect } from 'vitest'
import { openImage } from '../../src/introspect/container'
import type { VirtualDisk } from '../../src/introspect/container/types'
import { ROOT } from './cli'

export const FIXTURES = path.join(ROOT, '.cache', 'fixtures', 'containers')

/** Builds (or finds up to date) the container fixtures; returns their directory. One builder at a time (test files run in parallel). */
export function containerFixtures(): string {
  execFileSync('flock', ['/run/lock/vmdi-fuse-container-fixtures.lock', 'bash', path.join(ROOT, 'scripts', 'fixtures', 'containers.sh')], { stdio: 'inherit' })
  return FIXTURES
}

/**
 * qemu's probe does not recognise a fixed VHD (its footer is only at the end)
 * and would read it as raw: our fixtures name VHDs .vhd, so tell qemu.
 */
function fmtArgs(image: string): string[] {
  return image.endsWith('.vhd') ? ['-f', 'vpc'] : []
}

export interface QemuMapEntry {
  start: number
  length: number
  depth: number
  present: boolean
  zero: boolean
  data: boolean
  offset?: number
}

export function qemuMap(image: string): QemuMapEntry[] {
  return JSON.parse(execFileSync('qemu-img', ['map', ...fmtArgs(image), '--output=json', image], { encoding: 'utf8', maxBuffer: 256 << 20 }))
}

export function qemuInfo(image: string): { format: string; 'virtual-size': number; 'backing-filename'?: string; 'format-specific'?: { type: string; data: Record<string, unknown> } } {
  return JSON.parse(execFileSync('qemu-img', ['info', ...fmtArgs(image), '--output=json', image], { encoding: 'utf8' }))
}

/** The whole virtual disk as qemu reads it, as a raw file in a temporary directory. */
export function qemuRaw(image: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-qraw-'))
  const out = path.join(dir, 'disk.raw')
  execFileSync('qemu-img', ['convert', ...fmtArgs(image), '-O', 'raw', image, out])
  return out
}

/** Reads the whole disk through our map and compares it with qemu's raw conversion, chunk by chunk. */
export async function expectSameBytes(disk: VirtualDisk, image: string): Promise<void> {
  const raw = qemuRaw(image)
  try {
    expect(disk.size).toBe(fs.statSync(raw).size)
    const fd = fs.openSync(raw, 'r')
    try {
      const chunk = 4 << 20
      for (let off = 0; off < disk.size; off += chunk) {
        const n = Math.min(chunk, disk.size - off)
        const ours = await disk.read(off, n)
        const theirs = Buffer.alloc(n)
        fs.readSync(fd, theirs, 0, n, off)
        if (!ours.equals(theirs)) {
          let i = 0
          while (ours[i] === theirs[i]) i++
          throw new Error(`${image}: guest byte ${off + i} differs from qemu-img convert (ours ${ours[i]}, qemu ${theirs[i]})`)
        }
      }
    } finally {
      fs.closeSync(fd)
    }
  } finally {
    fs.rmSync(path.dirname(raw), { recursive: true, force: true })
  }
}

/**
 * Our guest → file map against `qemu-img map --output=json`: every range qemu
 * says is data at depth d must be data in the d-th layer of our chain, at the
 * same file offset; every range qemu says is absent from the top layer must
 * not be data in ours. (qemu-img 7.2 does not name the file of a multi-extent
 * VMDK; the file offset within the extent is compared.)
 */
export function expectMapMatchesQemu(disk: VirtualDisk, image: string): void {
  for (const e of qemuMap(image)) {
    let layer: VirtualDisk = disk
    for (let d = 0; d < e.depth; d++) {
      const m = layer.mapGuest(e.start)
      expect(m.kind, `${image} ${e.start}: depth ${d} should defer to the parent`).toBe('parent')
      expect(layer.parent, `${image}: qemu reports depth ${e.depth}`).not.toBeNull()
      layer = layer.parent as VirtualDisk
    }
    let pos = e.start
    while (pos < e.start + e.length) {
      const m = layer.mapGuest(pos)
      const n = Math.min(m.length, e.start + e.length - pos)
      if (e.data && e.offset !== undefined) {
        expect({ at: pos, kind: m.kind }).toEqual({ at: pos, kind: 'data' })
        if (m.kind === 'data') expect({ at: pos, fileOffset: m.fileOffset }).toEqual({ at: pos, fileOffset: e.offset + (pos - e.start) })
      } else if (!e.present || (e.zero && e.depth === 0 && layer.format !== 'raw')) {
        expect({ at: pos, data: m.kind === 'data' && !e.present }).toEqual({ at: pos, data: false })
      }
      pos += n
    }
  }
}

export function sha256(buf: Buffer): string {
  return crypto.createHash('sha256').update(buf).digest('hex')
}

/**
 * applyWrite against qemu: opens `image`, lets qemu-io run `commands` on it
 * (allocating clusters/grains/blocks and updating its tables), feeds every
 * changed 512-byte sector to applyWrite of the disk opened before, and checks
 * that the map equals a fresh open (every `step` bytes), qemu-img map, and the
 * bytes qemu reads. Returns how many guest ranges applyWrite reported.
 */
export async function expectApplyWriteMatches(image: string, fmt: string, commands: string[], step = 65536): Promise<number> {
  const before = fs.readFileSync(image)
  const d = await openImage(image)
  execFileSync('qemu-io', ['-f', fmt, ...commands.flatMap((c) => ['-c', c]), image], { stdio: 'ignore' })
  const after = fs.readFileSync(image)
  let changed = 0
  for (let o = 0; o < after.length; o += 512) {
    const a = after.subarray(o, o + 512)
    const b = o + 512 <= before.length ? before.subarray(o, o + 512) : Buffer.alloc(512)
    if (!a.equals(b)) changed += (await d.applyWrite(0, o, Buffer.from(a))).length
  }
  const fresh = await openImage(image)
  try {
    // Same mapping everywhere (run lengths may differ: updated runs are not re-merged).
    const at = (x: VirtualDisk, g: number) => {
      const { length: _l, ...m } = x.mapGuest(g)
      return m
    }
    for (let g = 0; g < d.size; g += step) expect({ g, m: at(d, g) }).toEqual({ g, m: at(fresh, g) })
    expectMapMatchesQemu(d, image)
    await expectSameBytes(d, image)
  } finally {
    await d.close()
    await fresh.close()
  }
  return changed
}
