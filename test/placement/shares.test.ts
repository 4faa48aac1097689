// Shares between VMs (issue 18, item 3), through a real mount: one VM
// streaming its data (or its image being scanned) never evicts another VM's
// meta-data from RAM, with the native data path and without it (then the
// stream's read-ahead copies go to RAM, at the lowest priority).
import { execFileSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { imageStats } from '../helpers/control'
import { mount, tmpdir, waitFor } from '../helpers/mount'

let base = ''
beforeAll(() => {
  base = tmpdir('vmdi-shares-')
})
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

describe('RAM shares across images', () => {
  for (const native of [true, false]) {
    it(`a VM streaming its disk and a new image's scan leave another VM's meta-data in RAM (native data path ${native ? 'on' : 'off'})`, async () => {
      const store = path.join(base, `store-${native}`)
      const tree = path.join(base, `tree-${native}`)
      fs.mkdirSync(store, { recursive: true })
      for (let d = 0; d < 40; d++) {
        fs.mkdirSync(path.join(tree, `d${d}`), { recursive: true })
        for (let f = 0; f < 40; f++) fs.writeFileSync(path.join(tree, `d${d}`, `f${f}`), `${d}/${f}\n`)
      }
      execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', tree, path.join(store, 'meta.img'), '128M'])
      // The streaming VM's disk: an ext4 holding one 96 MiB file; a second image is scanned meanwhile.
      const big = path.join(base, `big-${native}`)
      fs.mkdirSync(big, { recursive: true })
      const fd = fs.openSync(path.join(big, 'video'), 'w')
      for (let i = 0; i < 96; i++) fs.writeSync(fd, crypto.randomBytes(1 << 20))
      fs.closeSync(fd)
      execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', big, path.join(store, 'stream.img'), '160M'])
      execFileSync('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-d', tree, path.join(store, 'later.img'), '128M'])
      // RAM for 8 MiB: the meta-data VM's walk fits, the stream is 12 times that.
      const m = await mount(store, path.join(base, `mnt-${native}`), ['--ram-cache', '8M'], native ? {} : { VMDI_DATA_NATIVE: 'off' })
      const fds: number[] = []
      const open = (name: string, flags: number | string) => {
        fds.push(fs.openSync(path.join(m.mnt, name), flags))
        return fds[fds.length - 1]
      }
      try {
        open('meta.img', 'r')
        await waitFor(() => imageStats(m.mnt, 'meta.img')?.scan.warm === true, 60_000, 'the meta-data VM\'s scan and preload')
        const before = imageStats(m.mnt, 'meta.img')!.ramMetaBlocks
        expect(before).toBeGreaterThan(100)
        const s = open('stream.img', fs.constants.O_RDONLY | fs.constants.O_DIRECT)
        await waitFor(() => imageStats(m.mnt, 'stream.img')?.scan.warm === true, 60_000, 'the stream image\'s scan')
        open('later.img', 'r')
        const buf = Buffer.from(new ArrayBuffer(1 << 20))
        // The whole disk, twice (the file's data and everything else).
        for (let round = 0; round < 2; round++) for (let at = 0; at < 160 << 20; at += buf.length) fs.readSync(s, buf, 0, buf.length, at)
        await waitFor(() => imageStats(m.mnt, 'later.img')?.scan.warm === true, 60_000, 'the later image\'s scan')
        const after = imageStats(m.mnt, 'meta.img')!
        // Not one of its meta-data blocks left RAM for the stream or the other image's scan (both images' meta-data fit in RAM).
        expect(after.ramMetaBlocks).toBeGreaterThanOrEqual(before)
        const st = imageStats(m.mnt, 'stream.img')!
        if (native) expect(st.nativeReads).toBeGreaterThan(0)
        else expect(st.ramBlocks).toBeGreaterThan(0) // read-ahead copies, at the lowest priority
      } finally {
        for (const fd of fds) fs.closeSync(fd)
        expect(await m.stop()).toBe(0)
      }
    }, 180_000)
  }
})
