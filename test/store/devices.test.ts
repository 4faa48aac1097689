// One contract suite over every storage tier (src/store/device.ts; STYLE.md:
// file-disk's testOnAllDisks): the RAM cache, the SSD store, the HDD file and
// the file behind the emulated disk get the same writes and must give the same
// bytes back, with the differences the contract names (a file holds every
// block, past its end as zeros; a copy tier misses and can drop), and flush
// as durable as each tier says it is. Blocks describe themselves (which
// device, which block, which write) so a wrong block cannot pass.
import Database from 'better-sqlite3'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BlockClass } from '../../src/introspect/classes'
import { type BlockDevice, plainDevice, ramDevice, ssdDevice } from '../../src/store/device'
import { EmulatedHdd, hddDevice } from '../../src/store/hdd-device'
import { HddModel } from '../../src/store/hdd-model'
import { BLOCK, RamCache } from '../../src/store/ram'
import { SsdStore } from '../../src/store/ssd'

let dir = ''
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-devices-'))
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** A block that says what it is: `tag` (device and write), then the block number, repeated. */
function blk(tag: string, b: number, len = BLOCK): Buffer {
  const out = Buffer.alloc(BLOCK)
  out.write(`${tag}#${b};`.repeat(len).slice(0, len), 0, 'latin1')
  return out
}

/** The partial last block of the files: its first 100 bytes lie before the end. */
const LAST = 3
const TAIL = 100

interface Rig {
  dev: BlockDevice<unknown[]>
  /** What a write of this tier needs besides the bytes. */
  put: unknown[]
  /**
   * After flush(): is block b, as `want`, where the tier promises it survives?
   * (RAM: nowhere but this cache; SSD store: another connection reads it
   * committed; a file: another open of it reads it, and flush really syncs.)
   */
  durable(b: number, want: Buffer): Promise<void>
  /** Reads are synchronous (the RAM tier's hot path: no promise). */
  syncRead: boolean
  close(): Promise<void>
}

let n = 0
/** An image file of 3 blocks and 100 bytes, each block self-describing (the HDD file's starting content). */
function imageFile(): { file: string; fd: number } {
  const file = path.join(dir, `img${++n}.raw`)
  const head = [0, 1, 2].map((b) => blk('file', b))
  fs.writeFileSync(file, Buffer.concat([...head, blk('file', LAST, TAIL).subarray(0, TAIL)]))
  return { file, fd: fs.openSync(file, 'r+') }
}

function fileRig(make: (fd: number) => BlockDevice<unknown[]>): () => Rig {
  return () => {
    const { file, fd } = imageFile()
    let closed = false
    return {
      dev: make(fd),
      put: [],
      syncRead: false,
      async durable(b, want) {
        const again = fs.readFileSync(file).subarray(b * BLOCK, (b + 1) * BLOCK)
        expect(again.equals(want.subarray(0, again.length))).toBe(true)
        // flush is fdatasync of the file: on a closed descriptor it fails.
        const other = fs.openSync(file, 'r')
        const dev = make(other)
        fs.closeSync(other)
        await expect(dev.flush()).rejects.toMatchObject({ code: 'EBADF' })
      },
      async close() {
        if (!closed) fs.closeSync(fd)
        closed = true
      },
    }
  }
}

const rigs: [string, 'file' | 'copy', () => Rig][] = [
  [
    'RAM cache',
    'copy',
    () => {
      const cache = new RamCache(64 * BLOCK)
      return {
        dev: ramDevice(cache, 7),
        put: [3],
        syncRead: true,
        async durable(b, want) {
          // Nothing outlives the process: flush kept the block here, a new cache has nothing.
          const got = Buffer.alloc(BLOCK)
          expect(ramDevice(cache, 7).read(b, got)).toBe(BLOCK)
          expect(got.equals(want)).toBe(true)
          expect(ramDevice(new RamCache(64 * BLOCK), 7).read(b, got)).toBe(0)
        },
        async close() {},
      }
    },
  ],
  [
    'SSD store',
    'copy',
    () => {
      const file = path.join(dir, `ssd${++n}.sqlite`)
      const store = SsdStore.open(file)
      return {
        dev: ssdDevice(store, 5),
        put: [BlockClass.InodeTable, true],
        syncRead: true,
        async durable(b, want) {
          // Committed: another connection (another process, after a crash) reads it.
          const db = new Database(file, { readonly: true })
          try {
            const row = db.prepare('SELECT data, dirty FROM blocks WHERE image = 5 AND block = ?').get(b) as { data: Buffer; dirty: number } | undefined
            expect(row?.data.equals(want)).toBe(true)
            expect(row?.dirty).toBe(1)
          } finally {
            db.close()
          }
        },
        close: () => store.close(),
      }
    },
  ],
  ['HDD file', 'file', fileRig((fd) => plainDevice(fd))],
  ['emulated disk', 'file', fileRig((fd) => hddDevice(fd, new HddModel()))],
]

describe.each(rigs)('%s as a block device', (name, kind, open) => {
  const file = kind === 'file'

  it('has its kind; reads back what was written, into any offset of a buffer, leaving the rest alone', async () => {
    const r = open()
    try {
      expect(r.dev.kind).toBe(kind)
      for (const b of [0, 1, 9, 300]) await r.dev.write(b, blk(name, b), ...r.put)
      const big = Buffer.alloc(3 * BLOCK, 0xaa)
      for (const b of [300, 0, 9, 1]) {
        big.fill(0xaa)
        const got = r.dev.read(b, big, BLOCK)
        expect(typeof got === 'number').toBe(r.syncRead)
        expect(await got).toBe(BLOCK)
        expect(big.subarray(BLOCK, 2 * BLOCK).equals(blk(name, b))).toBe(true)
        expect(big.subarray(0, BLOCK).every((x) => x === 0xaa)).toBe(true)
        expect(big.subarray(2 * BLOCK).every((x) => x === 0xaa)).toBe(true)
      }
      // The default offset is 0.
      const one = Buffer.alloc(BLOCK)
      expect(await r.dev.read(9, one)).toBe(BLOCK)
      expect(one.equals(blk(name, 9))).toBe(true)
    } finally {
      await r.close()
    }
  })

  it('an overwrite wins and touches no other block; a write does not keep a reference to the caller\'s buffer', async () => {
    const r = open()
    try {
      const src = blk(`${name}-1`, 4)
      await r.dev.write(4, src, ...r.put)
      await r.dev.write(5, blk(`${name}-1`, 5), ...r.put)
      src.fill(0) // the caller reuses its buffer
      const got = Buffer.alloc(BLOCK)
      expect(await r.dev.read(4, got)).toBe(BLOCK)
      expect(got.equals(blk(`${name}-1`, 4))).toBe(true)
      await r.dev.write(4, blk(`${name}-2`, 4), ...r.put)
      expect(await r.dev.read(4, got)).toBe(BLOCK)
      expect(got.equals(blk(`${name}-2`, 4))).toBe(true)
      expect(await r.dev.read(5, got)).toBe(BLOCK)
      expect(got.equals(blk(`${name}-1`, 5))).toBe(true)
    } finally {
      await r.close()
    }
  })

  it('the partial last block of a file reads as its bytes then zeros; a file counts only the bytes before its end', async () => {
    const r = open()
    try {
      const want = blk('file', LAST, TAIL) // 100 bytes, then zeros: as the file holds it
      if (!file) await r.dev.write(LAST, want, ...r.put) // a copy tier holds the whole 4 KiB block
      const got = Buffer.alloc(BLOCK, 0xaa)
      expect(await r.dev.read(LAST, got)).toBe(file ? TAIL : BLOCK)
      expect(got.equals(want)).toBe(true)
      if (file) {
        // Writing the partial block with its length keeps the file's size; the whole block grows it.
        const fd = (r.dev as unknown as { fd: number }).fd
        await r.dev.write(LAST, blk('new', LAST, TAIL), TAIL)
        expect(fs.fstatSync(fd).size).toBe(LAST * BLOCK + TAIL)
        expect(await r.dev.read(LAST, got)).toBe(TAIL)
        expect(got.equals(blk('new', LAST, TAIL))).toBe(true)
        await r.dev.write(LAST, blk('new', LAST))
        expect(fs.fstatSync(fd).size).toBe((LAST + 1) * BLOCK)
        expect(await r.dev.read(LAST, got)).toBe(BLOCK)
        expect(got.equals(blk('new', LAST))).toBe(true)
      }
    } finally {
      await r.close()
    }
  })

  it(file ? 'a block past the end of the file reads as zeros, 0 bytes held' : 'a block never written is a miss: 0 bytes, the buffer untouched', async () => {
    const r = open()
    try {
      await r.dev.write(0, blk(name, 0), ...r.put)
      for (const b of [LAST + 1, 1000]) {
        const got = Buffer.alloc(BLOCK, 0xaa)
        expect(await r.dev.read(b, got)).toBe(0)
        expect(got.every((x) => x === (file ? 0 : 0xaa))).toBe(true)
      }
      if (file) {
        // A block written far past the end: the file grows, the hole between reads as zeros.
        await r.dev.write(20, blk(name, 20), ...r.put)
        const got = Buffer.alloc(BLOCK, 0xaa)
        expect(await r.dev.read(20, got)).toBe(BLOCK)
        expect(got.equals(blk(name, 20))).toBe(true)
        got.fill(0xaa)
        expect(await r.dev.read(10, got)).toBe(BLOCK)
        expect(got.every((x) => x === 0)).toBe(true)
        expect(await r.dev.read(21, got)).toBe(0)
      }
    } finally {
      await r.close()
    }
  })

  it('flush: what was written before it is as durable as the tier promises', async () => {
    const r = open()
    try {
      for (const b of [2, 6]) await r.dev.write(b, blk(`${name}-flushed`, b), ...r.put)
      await r.dev.flush()
      await r.durable(2, blk(`${name}-flushed`, 2))
      await r.durable(6, blk(`${name}-flushed`, 6))
      // A flush with nothing new to write resolves too, and loses nothing.
      await r.dev.flush()
      const got = Buffer.alloc(BLOCK)
      expect(await r.dev.read(6, got)).toBe(BLOCK)
      expect(got.equals(blk(`${name}-flushed`, 6))).toBe(true)
    } finally {
      await r.close()
    }
  })

  it.runIf(!file)('delete forgets one block; drop forgets every block from a block on', async () => {
    const r = open()
    const dev = r.dev as BlockDevice<unknown[]> & { delete(b: number): void; drop(from: number): void }
    try {
      for (let b = 0; b < 8; b++) await dev.write(b, blk(name, b), ...r.put)
      dev.delete(3)
      dev.drop(6)
      const got = Buffer.alloc(BLOCK)
      for (let b = 0; b < 8; b++) {
        got.fill(0xaa)
        const held = b !== 3 && b < 6
        expect(await dev.read(b, got)).toBe(held ? BLOCK : 0)
        if (held) expect(got.equals(blk(name, b))).toBe(true)
      }
      // Dropped blocks can be written again.
      await dev.write(7, blk(`${name}-again`, 7), ...r.put)
      expect(await dev.read(7, got)).toBe(BLOCK)
      expect(got.equals(blk(`${name}-again`, 7))).toBe(true)
      await dev.flush()
      expect(await dev.read(6, got)).toBe(0)
    } finally {
      await r.close()
    }
  })
})

describe('the emulated disk', () => {
  it('hddDevice: the plain file without a model; with one, every device on a file gets its one region, another file its own', async () => {
    const a = imageFile()
    const b = imageFile()
    const a2 = fs.openSync(a.file, 'r')
    try {
      const plain = hddDevice(a.fd, null)
      expect(plain).not.toBeInstanceOf(EmulatedHdd)
      const m = new HddModel()
      const buf = Buffer.alloc(BLOCK)
      expect(await plain.read(1, buf)).toBe(BLOCK)
      expect(m.stats.requests).toBe(0)
      // The pass-through's handles and the datapath's attach (again after a reset) agree on the file's place.
      const first = hddDevice(a.fd, m) as EmulatedHdd
      const other = hddDevice(b.fd, m) as EmulatedHdd
      const again = hddDevice(a2, m) as EmulatedHdd
      const direct = new EmulatedHdd(a2, m)
      expect(first.baseOffset).toBe(0)
      expect(other.baseOffset).toBe(2 * 2 ** 30)
      expect(again.baseOffset).toBe(first.baseOffset)
      expect(direct.baseOffset).toBe(first.baseOffset)
      expect((hddDevice(a.fd, m, { baseOffset: 12345 }) as EmulatedHdd).baseOffset).toBe(12345)
      // Its I/O goes through the model.
      expect(await again.read(1, buf)).toBe(BLOCK)
      expect(buf.equals(blk('file', 1))).toBe(true)
      expect(m.stats.requests).toBe(1)
      expect(again.stats.reads).toBe(1)
    } finally {
      for (const fd of [a.fd, b.fd, a2]) fs.closeSync(fd)
    }
  })
})
