// The mount's settings (src/settings.ts): options into one typed Settings, without
// mounting anything (STORE and MOUNTPOINT are real, empty temp directories).
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CliError } from '../src/errors'
import { datapathSummary, readSettings, type MountConfig } from '../src/settings'

let base = ''
let store = ''
let mnt = ''
const savedState = process.env.VMDI_STATE_DIR

beforeAll(() => {
  base = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-settings-')))
  store = path.join(base, 'store')
  mnt = path.join(base, 'mnt')
  fs.mkdirSync(store)
  fs.mkdirSync(mnt)
  process.env.VMDI_STATE_DIR = path.join(base, 'state')
})
afterAll(() => {
  if (savedState === undefined) delete process.env.VMDI_STATE_DIR
  else process.env.VMDI_STATE_DIR = savedState
  fs.rmSync(base, { recursive: true, force: true })
})

function cfg(more: Partial<MountConfig> = {}): MountConfig {
  return { store, mountpoint: mnt, foreground: true, options: [], nfs: false, force: false, debug: false, log: null, ...more }
}

/** The usage error readSettings throws: its message and exit status. */
function refusal(more: Partial<MountConfig>): { message: string; status: number } {
  try {
    readSettings(cfg(more))
  } catch (e) {
    if (e instanceof CliError) return { message: e.message, status: e.exitCode }
    throw e
  }
  throw new Error(`readSettings accepted ${JSON.stringify(more)}`)
}

describe('readSettings', () => {
  it('defaults: our libfuse options, the datapath sized to the machine, every default named in the log line', () => {
    const s = readSettings(cfg())
    expect(s.store).toBe(store)
    expect(s.mountpoint).toBe(mnt)
    expect(s.fuseOptions).toEqual(['big_writes', 'max_write=131072', 'max_read=131072', 'use_ino', `fsname=${store}`, 'subtype=vmdi-fuse'])
    expect(s.hdd).toBeNull()
    const d = s.datapath!
    expect(d.ssdPath).toMatch(new RegExp(`^${path.join(base, 'state')}/[0-9a-f]{16}\\.sqlite$`))
    expect(d.ramBytes).toBe(Math.min(2 ** 30, Math.floor(os.totalmem() / 16)))
    expect(d.ssdMaxBytes).toBeGreaterThanOrEqual(64 << 20)
    expect(d.ssdMaxBytes).toBeLessThanOrEqual(16 * 2 ** 30)
    expect(d).toMatchObject({ cacheMode: 'introspect', smallFileBytes: 32768, bootFiles: true, exclude: [] })
    expect(d.newDataBytes).toBe(Math.min(2 ** 30, Math.floor(d.ssdMaxBytes / 2)))
    expect(s.defaulted).toEqual({ ramCache: true, ssd: true, ssdMax: true, smallFiles: true, newData: true })
    const line = datapathSummary(s)
    expect(line).toMatch(/^datapath: RAM cache \d+ MiB \(default: 1\/16 of RAM, at most 1 GiB; --ram-cache\), SSD store .*\.sqlite \(default; --ssd\) capped at \d+\.\d\d GiB \(default: half/)
    expect(line).toContain("small files' data with the meta-data: up to 32 KiB (default; --small-files)")
    expect(line).toContain("boot files' data with the meta-data: on (default; --no-boot-files)")
    expect(line).toContain('meta-data RAM kept per image against the others: a fair share (the RAM cache over the images attached; default; --ram-floor)')
  })

  it('given options: sizes, the SSD store, exclusions, --nfs and -o merged (the user\'s value wins)', () => {
    const ssd = path.join(base, 'ssd', 'x.sqlite')
    const s = readSettings(
      cfg({ options: ['max_read=65536,fsname=ds1'], nfs: true, ramCache: '64M', ssd, ssdMax: '1G', smallFiles: '1000', newData: '2G', ramFloor: '16M', exclude: ['scratch/**'], bootFiles: false }),
    )
    expect(s.fuseOptions).toEqual(['big_writes', 'max_write=131072', 'use_ino', 'noforget', 'max_read=65536', 'fsname=ds1', 'subtype=vmdi-fuse'])
    expect(s.datapath).toMatchObject({ ramBytes: 64 << 20, ssdPath: ssd, ssdMaxBytes: 2 ** 30, smallFileBytes: 1000, newDataBytes: 2 ** 29, ramFloor: 16 << 20, bootFiles: false, exclude: ['scratch/**'] })
    expect(fs.statSync(path.dirname(ssd)).isDirectory()).toBe(true)
    const line = datapathSummary(s)
    expect(line).toContain('datapath: RAM cache 64 MiB, SSD store ' + ssd + ' capped at 1.00 GiB, ')
    expect(line).toContain("small files' data with the meta-data: up to 1000 bytes, boot files' data with the meta-data: off, new data held on the SSD store: up to 512 MiB, meta-data RAM kept per image against the others: 16 MiB, excluded: scratch/**")
  })

  it('--no-introspect: no datapath; --cache-mode conventional; --emulate-hdd laptop5400', () => {
    const off = readSettings(cfg({ introspect: false }))
    expect(off.datapath).toBeNull()
    expect(datapathSummary(off)).toBe('datapath off (--no-introspect): every file is a plain pass-through')
    const conv = readSettings(cfg({ cacheMode: 'conventional' }))
    expect(conv.datapath!.cacheMode).toBe('conventional')
    expect(datapathSummary(conv)).toContain('conventional cache mode (no classes)')
    expect(readSettings(cfg({ emulateHdd: 'laptop5400' })).hdd!.rpm).toBe(5400)
  })

  it('refuses bad values with a usage error (status 2) naming the option', () => {
    expect(refusal({ cacheMode: 'magic' })).toEqual({ status: 2, message: expect.stringMatching(/^--cache-mode magic is not a mode/) })
    expect(refusal({ emulateHdd: 'floppy' })).toEqual({ status: 2, message: '--emulate-hdd floppy is not a known disk profile: use laptop5400' })
    expect(refusal({ emulateHdd: 'toString' }).message).toMatch(/^--emulate-hdd toString is not a known disk profile/)
    expect(refusal({ smallFiles: '4M' })).toEqual({ status: 2, message: expect.stringMatching(/^--small-files 4M is above 1 MiB: .*or 0 to turn it off$/) })
    expect(refusal({ ssdMax: '512K' })).toEqual({ status: 2, message: expect.stringMatching(/^--ssd-max 512K is below 1 MiB/) })
    expect(refusal({ ramCache: 'lots' })).toEqual({ status: 2, message: '--ram-cache "lots" is not a size: write e.g. 512M, 4G or 1073741824' })
    expect(refusal({ ssd: path.join(store, 's.sqlite') })).toEqual({ status: 2, message: expect.stringMatching(/^--ssd .*s\.sqlite is inside the store/) })
    expect(refusal({ ssd: path.join(mnt, 's.sqlite') })).toEqual({ status: 2, message: expect.stringMatching(/^--ssd .*s\.sqlite is inside the mount point/) })
    expect(refusal({ options: ['frobnicate'] }).status).toBe(2)
  })

  it('checks -o before STORE, STORE before MOUNTPOINT, the mount point before the datapath options', () => {
    expect(refusal({ options: ['frobnicate'], store: path.join(base, 'nope') }).message).toMatch(/unknown mount option "-o frobnicate"/)
    expect(refusal({ store: path.join(base, 'nope'), mountpoint: path.join(base, 'nomnt') }).message).toMatch(/store .*nope does not exist/)
    expect(refusal({ mountpoint: path.join(base, 'nomnt'), cacheMode: 'magic' }).message).toMatch(/mount point .*nomnt does not exist/)
  })
})
