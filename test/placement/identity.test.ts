// Image identity (src/placement/identity.ts) over a real SSD store: each
// status, what each leaves in the store, and across a restart of the store
// (a new connection reads the rows the last one wrote).
import Database from 'better-sqlite3'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BlockClass } from '../../src/introspect/classes'
import { ExtentMap } from '../../src/introspect/map/extent-map'
import { registerImage } from '../../src/placement/identity'
import { BLOCK } from '../../src/store/ram'
import { SsdStore } from '../../src/store/ssd'

let dir = ''
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-identity-'))
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** The image's row as another connection reads it (what a restart would find). */
function storedRow(file: string, id: number): unknown {
  const db = new Database(file, { readonly: true })
  try {
    return db.prepare('SELECT size FROM images WHERE id = ?').get(id)
  } finally {
    db.close()
  }
}

const who = { path: '/store/vm1.img', dev: 1, ino: 100, size: 1 << 20, signature: Buffer.from('header-a') }
const map = new ExtentMap()
map.set(3, 2, BlockClass.InodeTable)

describe('registerImage', () => {
  it('new: a fresh id per path, a row the next connection reads back', async () => {
    const file = path.join(dir, 'new.sqlite')
    const s = SsdStore.open(file)
    const a = registerImage(s, who)
    expect(a).toEqual({ id: expect.any(Number), status: 'new', map: null, dirtyBlocks: 0, clean: null, written: null })
    const b = registerImage(s, { ...who, path: '/store/vm2.img', ino: 101 })
    expect(b.status).toBe('new')
    expect(b.id).not.toBe(a.id)
    // In the same process, before or after the row is written: the same image.
    expect(registerImage(s, who)).toMatchObject({ id: a.id, status: 'same' })
    await s.close()
    const t = SsdStore.open(file)
    expect(t.imageRecord(who.path)).toMatchObject({ id: a.id, dev: 1, ino: 100, size: 1 << 20 })
    expect(t.imageRecord(who.path)!.signature.equals(who.signature)).toBe(true)
    expect(registerImage(t, who)).toMatchObject({ id: a.id, status: 'same' })
    // A third image after a restart gets an id no earlier one had.
    const c = registerImage(t, { ...who, path: '/store/vm3.img', ino: 102 })
    expect(c.status).toBe('new')
    expect([a.id, b.id]).not.toContain(c.id)
    await t.close()
  })

  it('same: map, dirty blocks and clean record come back; a grown size or the previous signature are still the same image', async () => {
    const file = path.join(dir, 'same.sqlite')
    const s = SsdStore.open(file)
    const a = registerImage(s, who)
    s.saveMap(a.id, map.serialize(4096))
    s.put(a.id, 3, Buffer.alloc(BLOCK, 1), BlockClass.InodeTable, true)
    s.put(a.id, 4, Buffer.alloc(BLOCK, 2), BlockClass.InodeTable, false)
    s.saveCleanRecord(a.id, Buffer.from('clean-record'))
    await s.close()
    const t = SsdStore.open(file)
    const again = registerImage(t, who)
    expect(again).toMatchObject({ id: a.id, status: 'same', dirtyBlocks: 1 })
    expect([...ExtentMap.deserialize(again.map!).map.runs()]).toEqual([[3, 2, BlockClass.InodeTable]])
    expect(again.clean?.toString()).toBe('clean-record')
    // Grown (writes past the end before a crash): the same image, its row takes the new size.
    expect(registerImage(t, { ...who, size: 3 << 20 })).toMatchObject({ id: a.id, status: 'same', dirtyBlocks: 1 })
    await t.commit()
    expect(storedRow(file, a.id)).toEqual({ size: 3 << 20 })
    // Our own write of the header block: the new signature is recorded, the old one still accepted.
    t.setSignature(a.id, Buffer.from('header-b'))
    await t.close()
    const u = SsdStore.open(file)
    expect(registerImage(u, { ...who, size: 2 << 20 })).toMatchObject({ id: a.id, status: 'same', dirtyBlocks: 1 })
    await u.commit()
    // The registration took the file as it is now: its size and signature are the row's.
    expect(u.imageRecord(who.path)).toMatchObject({ size: 2 << 20 })
    await u.close()
    const v = SsdStore.open(file)
    expect(v.imageRecord(who.path)).toMatchObject({ size: 2 << 20 })
    expect(v.imageRecord(who.path)!.signature.equals(who.signature)).toBe(true)
    // The file was found with the previous header: that one is its signature again, the newer one is not accepted.
    expect(registerImage(v, who)).toMatchObject({ status: 'same' })
    expect(registerImage(v, { ...who, signature: Buffer.from('header-b') })).toMatchObject({ status: 'conflict', dirtyBlocks: 1 })
    expect(v.get(a.id, 4)?.data[0]).toBe(2)
    await v.close()
  })

  it('reset: changed (inode or header) with no dirty blocks: blocks, map and clean record dropped, the new identity kept', async () => {
    const file = path.join(dir, 'reset.sqlite')
    const s = SsdStore.open(file)
    const a = registerImage(s, who)
    s.put(a.id, 9, Buffer.alloc(BLOCK, 2), BlockClass.Directory, false)
    s.saveMap(a.id, map.serialize(4096))
    s.saveCleanRecord(a.id, Buffer.from('clean-record'))
    await s.close()
    const t = SsdStore.open(file)
    const r = registerImage(t, { ...who, ino: 202 })
    expect(r).toEqual({ id: a.id, status: 'reset', map: null, dirtyBlocks: 0, clean: null, written: null })
    expect(t.get(a.id, 9)).toBeUndefined()
    await t.close()
    const u = SsdStore.open(file)
    expect(u.get(a.id, 9)).toBeUndefined()
    expect(u.imageRecord(who.path)).toMatchObject({ id: a.id, ino: 202, map: null, clean: null })
    // The new identity is the image's now; a changed header alone resets too.
    expect(registerImage(u, { ...who, ino: 202 })).toMatchObject({ id: a.id, status: 'same' })
    expect(registerImage(u, { ...who, ino: 202, signature: Buffer.from('header-c') })).toMatchObject({ id: a.id, status: 'reset' })
    expect(registerImage(u, { ...who, ino: 202, signature: Buffer.from('header-c'), dev: 2 })).toMatchObject({ id: a.id, status: 'reset' })
    await u.close()
  })

  it('conflict: changed while the store holds dirty blocks: nothing dropped or changed, still a conflict after a rename and a restart', async () => {
    const file = path.join(dir, 'conflict.sqlite')
    const s = SsdStore.open(file)
    const a = registerImage(s, who)
    s.saveMap(a.id, map.serialize(4096))
    s.put(a.id, 3, Buffer.alloc(BLOCK, 1), BlockClass.InodeTable, true)
    await s.close()
    const t = SsdStore.open(file)
    const changed = { ...who, signature: Buffer.from('header-x') }
    expect(registerImage(t, changed)).toEqual({ id: a.id, status: 'conflict', map: null, dirtyBlocks: 1, clean: null, written: null })
    expect(t.get(a.id, 3)?.dirty).toBe(true)
    // Asked again, and at a new name: the store did not take the changed file for the image.
    expect(registerImage(t, changed)).toMatchObject({ status: 'conflict' })
    t.renameImage(who.path, '/store/moved.img')
    await t.commit() // a rename is read back once written (imageId, imageRecord)
    expect(registerImage(t, { ...changed, path: '/store/moved.img' })).toMatchObject({ id: a.id, status: 'conflict', dirtyBlocks: 1 })
    await t.close()
    const u = SsdStore.open(file)
    expect(registerImage(u, { ...changed, path: '/store/moved.img' })).toMatchObject({ status: 'conflict' })
    expect(u.imageRecord('/store/moved.img')!.map).not.toBeNull()
    // The unchanged file is still the image.
    expect(registerImage(u, { ...who, path: '/store/moved.img' })).toMatchObject({ id: a.id, status: 'same', dirtyBlocks: 1 })
    await u.close()
  })

  it('recover: after adoptIdentity the changed file is the image; after forgetImage the path is new again', async () => {
    const file = path.join(dir, 'recover.sqlite')
    const s = SsdStore.open(file)
    const a = registerImage(s, who)
    s.put(a.id, 3, Buffer.alloc(BLOCK, 1), BlockClass.InodeTable, true)
    const changed = { ...who, signature: Buffer.from('header-y') }
    expect(registerImage(s, changed).status).toBe('conflict')
    s.markClean(a.id, 3)
    s.adoptIdentity(a.id, changed)
    await s.commit()
    expect(registerImage(s, changed)).toMatchObject({ id: a.id, status: 'same', dirtyBlocks: 0 })
    s.forgetImage(a.id)
    await s.commit()
    expect(s.imageRecord(who.path)).toBeNull()
    expect(registerImage(s, who)).toMatchObject({ status: 'new' })
    await s.close()
  })
})
