// Many images on one mount (issue 18, fair background work): the scheduler
// of scans and preloads as a unit, then a Datapath over temporary files with
// several images: every image's scan starts at once whatever the others do,
// a busy guest's small-file sweep never holds up another image, and a fresh
// sparse container far smaller than 1 MiB is attached by content.
import { execFileSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { setLogSink } from '../../src/log'
import { Datapath, type ImageEntry } from '../../src/placement/datapath'
import { PreloadScheduler, Slots } from '../../src/placement/schedule'
import type { BlockRun } from '../../src/placement/blocks'
import { dpOptions, imageStats, makeTree, mkExt4, readVia, until, warm } from '../helpers/datapath'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('Slots', () => {
  it('runs at most n at once and starts the next as one ends', async () => {
    const slots = new Slots(2)
    let running = 0
    let most = 0
    const order: number[] = []
    await Promise.all(
      [0, 1, 2, 3, 4].map((i) =>
        slots.run(async () => {
          running++
          most = Math.max(most, running)
          order.push(i)
          await sleep(20)
          running--
        }),
      ),
    )
    expect(most).toBe(2)
    expect(order).toEqual([0, 1, 2, 3, 4])
  })
})

describe('PreloadScheduler', () => {
  const spans = (n: number, at = 0): BlockRun[] => Array.from({ length: n }, (_, i) => [at + i * 10, 10])

  it("reads every image's meta-data before any image's small files, the busiest guest's first", async () => {
    const sched = new PreloadScheduler(20)
    const log: string[] = []
    const now = Date.now()
    const job = (name: string, meta: number, small: number, lastIo: number) =>
      sched.submit({
        meta: spans(meta),
        small: spans(small, 1000),
        read: async (_s, phase) => {
          log.push(`${name}:${phase}`)
          await sleep(1)
        },
        lastGuestIo: () => lastIo,
        stopped: () => false,
      })
    const done = await Promise.all([job('idle', 2, 2, now - 60_000), job('busy', 2, 0, now)])
    expect(done).toEqual([true, true])
    expect(log.slice(0, 4).sort()).toEqual(['busy:meta', 'busy:meta', 'idle:meta', 'idle:meta'])
    // The first job submitted starts the queue; from then on the guest doing I/O comes first.
    expect(log.slice(1, 3)).toEqual(['busy:meta', 'busy:meta'])
    expect(log.slice(4)).toEqual(['idle:small', 'idle:small'])
  })

  it("starting VMs go first, meta-data then boot files, ungated by their busy guests, and take turns span by span", async () => {
    const sched = new PreloadScheduler(50)
    const log: string[] = []
    let over = false
    const job = (name: string, rush: boolean) =>
      sched.submit({
        meta: spans(2),
        boot: spans(2, 500),
        small: spans(1, 1000),
        rush: () => rush,
        read: async (s, phase) => {
          log.push(`${name}:${phase === 'meta' ? 'meta' : s[0] >= 1000 ? 'small' : 'boot'}`)
          await sleep(1)
        },
        lastGuestIo: () => (rush ? Date.now() : 0), // the starting VMs are busy; the other one idle
        stopped: () => over,
      })
    const all = Promise.all([job('idle', false), job('a', true), job('b', true)])
    await sleep(200)
    // The first job submitted starts the queue (one span); then a and b alternate through meta-data and boot files.
    expect(log.slice(1, 9)).toEqual(['a:meta', 'b:meta', 'a:meta', 'b:meta', 'a:boot', 'b:boot', 'a:boot', 'b:boot'])
    // Their small files wait for their guests to pause (they never do here); the idle image's do not.
    expect(log).toContain('idle:small')
    expect(log.filter((l) => l.endsWith(':small') && !l.startsWith('idle'))).toEqual([])
    over = true
    expect(await all).toEqual([true, false, false])
  })

  it("a guest that never pauses holds back its own small files only, not another image's", async () => {
    const sched = new PreloadScheduler(50)
    const log: string[] = []
    let stopBusy = false
    const busy = sched.submit({
      meta: [],
      small: spans(3),
      read: async () => void log.push('busy'),
      lastGuestIo: () => Date.now(), // always doing I/O
      stopped: () => stopBusy,
    })
    await sleep(30)
    const idle = await sched.submit({
      meta: spans(1),
      small: spans(2),
      read: async (_s, phase) => void log.push(`idle:${phase}`),
      lastGuestIo: () => 0,
      stopped: () => false,
    })
    expect(idle).toBe(true)
    expect(log).toEqual(['idle:meta', 'idle:small', 'idle:small'])
    stopBusy = true
    expect(await busy).toBe(false)
  })
})

describe('Datapath with several images', () => {
  let dir = ''
  const images = ['vm0.img', 'vm1.img', 'vm2.img', 'vm3.img', 'vm4.img', 'vm5.img']
  beforeAll(() => {
    setLogSink(() => undefined)
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-fleet-'))
    const tree = path.join(dir, 'tree')
    makeTree(tree, 6, 20)
    fs.mkdirSync(path.join(dir, 'store'))
    mkExt4(path.join(dir, 'store', images[0]), tree, 32)
    for (const im of images.slice(1)) fs.copyFileSync(path.join(dir, 'store', images[0]), path.join(dir, 'store', im))
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(dir, 'store', 'new.qcow2'), '1G'])
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(dir, 'store', 'tiny.qcow2'), '512K'])
    fs.writeFileSync(path.join(dir, 'store', 'notes.txt'), 'QFI\xfb is how a qcow2 starts; this file is not one\n'.repeat(40))
  })
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  it("every image's scan starts at once while another image's small-file sweep waits for its busy guest", async () => {
    const store = path.join(dir, 'store')
    const dp = new Datapath(dpOptions(store, path.join(dir, 'a.sqlite'), { smallFileBytes: 32 << 10, destageIdleMs: 200 }))
    try {
      const first = (await dp.attach(images[0], path.join(store, images[0]))) as ImageEntry
      expect(first).toBeTruthy()
      // The first VM reads a block every 20 ms, for good: its small-file sweep never runs while it does.
      let busy = true
      const guest = (async () => {
        while (busy) {
          await readVia(dp, first, 0, 4096)
          await sleep(20)
        }
      })()
      await until(() => imageStats(dp, images[0]).scan.state === 'done', 30_000, `the scan of ${images[0]}`)
      await sleep(300)
      const t0 = Date.now()
      const entries = await Promise.all(images.slice(1).map((im) => dp.attach(im, path.join(store, im))))
      expect(entries.every(Boolean)).toBe(true)
      // Their scans start at once (a few at a time) and all finish, small files of the busy image still pending.
      await until(() => images.slice(1).every((im) => imageStats(dp, im).scan.state !== 'pending'), 1000, 'every new image to start its scan')
      for (const im of images.slice(1)) await warm(dp, im, 60_000)
      expect(Date.now() - t0).toBeLessThan(60_000)
      expect(imageStats(dp, images[0]).scan.warm).toBe(false) // its sweep still waits for a pause
      busy = false
      await guest
      await warm(dp, images[0], 60_000)
      expect(imageStats(dp, images[0]).preloaded).toBeGreaterThan(0)
    } finally {
      await dp.close()
    }
  })

  it('attaches a fresh 200 KiB qcow2 of a 1 GiB disk at its first open, not a small disk or a text file that starts like one', async () => {
    const store = path.join(dir, 'store')
    expect(fs.statSync(path.join(store, 'new.qcow2')).size).toBeLessThan(1 << 20)
    const dp = new Datapath(dpOptions(store, path.join(dir, 'b.sqlite')))
    try {
      expect(await dp.attach('new.qcow2', path.join(store, 'new.qcow2'))).toBeTruthy()
      expect(await dp.attach('tiny.qcow2', path.join(store, 'tiny.qcow2'))).toBeNull()
      expect(await dp.attach('notes.txt', path.join(store, 'notes.txt'))).toBeNull()
      expect(dp.stats().images.map((i) => i.path)).toEqual(['new.qcow2'])
    } finally {
      await dp.close()
    }
  })
})
