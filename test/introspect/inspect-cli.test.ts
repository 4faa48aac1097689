// `vmdi-fuse inspect` end to end on the MBR fixture (ext2 at the old sector-63
// offset, ext4, ext3 in a logical partition): exit statuses, the --json keys
// the README documents, and --map against e2fsprogs on each partition — every
// meta-data byte of the oracle is inside a meta-data extent of the file, and
// every 4 KiB file block that holds only data is outside them.
import { execFileSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CLI, runCli } from '../helpers/cli'
import { e2oracle } from '../helpers/e2oracle'
import { containerFixtures } from '../helpers/qemu'

let dir = ''
let tmp = ''
beforeAll(() => {
  dir = containerFixtures()
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-insp-'))
})
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

describe('vmdi-fuse inspect', () => {
  it('--json: container, partitions and file systems; exit 0', () => {
    const r = runCli(['inspect', path.join(dir, 'mbr.raw'), '--json'])
    expect(r.status).toBe(0)
    const j = JSON.parse(r.stdout)
    expect(j).toMatchObject({ format: 'raw', subformat: 'flat', virtualSize: 96 << 20, files: [path.join(dir, 'mbr.raw')] })
    expect(j.partitions.map((p: { index: number; start: number; content: string }) => [p.index, p.start, p.content])).toEqual([
      [1, 63 * 512, 'ext2'],
      [2, 22528 * 512, 'ext4'],
      [3, 49152 * 512, 'extended'],
      [5, 51200 * 512, 'vfat'],
      [6, 69632 * 512, 'swap'],
      [7, 79872 * 512, 'ext3'],
    ])
    expect(j.filesystems.map((f: { volume: number; type: string }) => [f.volume, f.type])).toEqual([
      [1, 'ext2'],
      [2, 'ext4'],
      [7, 'ext3'],
    ])
    const human = runCli(['inspect', path.join(dir, 'mbr.raw')])
    expect(human.status).toBe(0)
    expect(human.stdout).toMatch(/file system on volume 7: ext3, 1024-byte blocks/)
  })

  it('exit 2 for a file that is not a disk image, 1 for a missing file or a usage error', () => {
    const notDisk = runCli(['inspect', path.join(dir, 'random.bin')])
    expect(notDisk.status).toBe(2)
    expect(notDisk.stderr).toMatch(/random.bin is not a disk image/)
    const missing = runCli(['inspect', path.join(tmp, 'nope.img')])
    expect(missing.status).toBe(1)
    expect(missing.stderr).toMatch(/nope.img: no such file/)
    expect(runCli(['inspect', '--bogus', path.join(dir, 'mbr.raw')]).status).toBe(1)
    expect(runCli(['inspect', path.join(dir, 'mbr.raw'), '--at', 'xyz']).stderr).toMatch(/--at xyz: expected a byte offset/)
  })

  it('--map --json covers every meta-data byte e2fsprogs knows of, in each partition, and no data-only 4 KiB block', () => {
    const image = path.join(dir, 'mbr.raw')
    const r = runCli(['inspect', image, '--map', '--json'], { maxBuffer: 64 << 20 })
    expect(r.status).toBe(0)
    const files = JSON.parse(r.stdout).files as { path: string; size: number; extents: [number, number, string][] }[]
    expect(files.map((f) => f.path)).toEqual([image])
    const ext = files[0].extents
    const metaAt = (off: number): string | null => {
      let lo = 0
      let hi = ext.length - 1
      while (lo <= hi) {
        const mid = (lo + hi) >> 1
        if (off < ext[mid][0]) hi = mid - 1
        else if (off >= ext[mid][0] + ext[mid][1]) lo = mid + 1
        else return ext[mid][2]
      }
      return null
    }
    const table = JSON.parse(runCli(['inspect', image, '--json']).stdout)
    const metaFileBlocks = new Set<number>([0]) // the MBR
    for (const p of table.partitions.filter((x: { content: string }) => ['ext2', 'ext3', 'ext4'].includes(x.content))) {
      const part = path.join(tmp, `p${p.index}`)
      execFileSync('dd', [`if=${image}`, `of=${part}`, 'bs=512', `skip=${p.start / 512}`, `count=${p.size / 512}`, 'status=none'])
      const o = e2oracle(part)
      for (const [b, cls] of o.classes) {
        if (cls === 'data') continue
        const first = p.start + b * o.blockSize
        for (let off = first; off < first + o.blockSize; off += 512) {
          expect(metaAt(off), `partition ${p.index} block ${b} (${cls}) byte ${off}`).not.toBeNull()
          metaFileBlocks.add(Math.floor(off / 4096))
        }
      }
    }
    // EBRs are partition-table meta-data too.
    for (const off of [49152 * 512, 69631 * 512, 79871 * 512]) {
      expect(metaAt(off)).toBe('partition-table')
      metaFileBlocks.add(Math.floor(off / 4096))
    }
    for (const [off, len] of ext) {
      for (let b = Math.floor(off / 4096); b < Math.ceil((off + len) / 4096); b++) expect(metaFileBlocks.has(b), `file block ${b} is meta-data in our map only`).toBe(true)
    }
  })

  it('draws a scan progress bar on a terminal (script(1) supplies one) once a scan has run its delay, and none when piped', () => {
    const image = path.join(dir, 'gpt.raw')
    const run = (afterMs: number) => execFileSync('script', ['-qec', `${process.execPath} ${CLI} inspect ${image}`, '/dev/null'], { encoding: 'utf8', env: { ...process.env, VMDI_BAR_AFTER_MS: String(afterMs) } })
    expect(run(0)).toMatch(/\r\[#+\] 100% scanning ext4 in volume \d+ \(/)
    expect(run(60_000)).not.toMatch(/scanning/) // a scan shorter than the delay shows none
    const piped = runCli(['inspect', image])
    expect(piped.stderr).toBe('')
    expect(piped.stdout).not.toMatch(/scanning/)
  })

  it('--at names the class, inode and path of a byte of the image file', () => {
    const image = path.join(dir, 'mbr.raw')
    const part = path.join(tmp, 'p7')
    execFileSync('dd', [`if=${image}`, `of=${part}`, 'bs=512', 'skip=79872', 'count=40960', 'status=none'])
    const stat = execFileSync('debugfs', ['-R', 'stat /sub/deeper', part], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const block = Number(/\(0\):(\d+)/.exec(stat)![1])
    const at = 79872 * 512 + block * 1024 + 100
    const r = runCli(['inspect', image, '--at', String(at), '--json'])
    expect(r.status).toBe(0)
    expect(JSON.parse(r.stdout)).toMatchObject({ offset: at, kind: 'guest', class: 'directory', volume: 7, fsBlock: block, path: '/sub/deeper', logical: 0 })
    expect(runCli(['inspect', image, '--at', '0']).stdout).toMatch(/^0: partition-table \(MBR\)/)
  })
})
