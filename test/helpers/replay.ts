// The live map's oracle: an ExtFs scanned from the image before some changes
// the kernel's own ext driver made, fed every changed block through update()
// (data and mapping blocks first, inode-table blocks last, as a guest's
// writeback often orders them), against a fresh scan of the image after.
import fs from 'fs'
import { BlockClass, className } from '../../src/introspect/classes'
import { type ExtFs, type ExtScanOptions, scanExt } from '../../src/introspect/fs/ext'
import { inspectImage } from '../../src/introspect/inspect'
import { FILE_BLOCK } from '../../src/introspect/map/fold'
import { ImageMap, type ClassChange } from '../../src/introspect/map/image-map'
import { BufferReader } from '../../src/introspect/reader'

/** The two maps as above, and every block where they differ (at most 10). */
export async function replayChanges(before: Buffer, after: Buffer, opts: ExtScanOptions, bs = 4096): Promise<{ live: ExtFs; fresh: ExtFs; wrong: string[] }> {
  const cur = Buffer.from(before)
  const live = await scanExt(new BufferReader(cur, 'live'), opts)
  const changed: number[] = []
  for (let k = 0; k < before.length / bs; k++) if (!before.subarray(k * bs, (k + 1) * bs).equals(after.subarray(k * bs, (k + 1) * bs))) changed.push(k)
  const itable = changed.filter((k) => live.classOf(k) === BlockClass.InodeTable)
  for (const k of [...changed.filter((k) => live.classOf(k) !== BlockClass.InodeTable), ...itable]) {
    const nb = after.subarray(k * bs, (k + 1) * bs)
    await live.update(k, Buffer.from(nb))
    nb.copy(cur, k * bs)
  }
  const fresh = await scanExt(new BufferReader(after, 'after'), opts)
  const wrong: string[] = []
  for (let k = 0; k < before.length / bs && wrong.length < 10; k++) {
    if (live.classOf(k) !== fresh.classOf(k)) wrong.push(`block ${k}: ${className(live.classOf(k))}, fresh ${className(fresh.classOf(k))}`)
  }
  return { live, fresh, wrong }
}

/**
 * The image map's oracle: an ImageMap of `live` (a copy of the image before
 * some changes), fed every changed 4 KiB block of `after` through applyWrite
 * before the block lands, against a fresh scan of `after`. The order is the
 * one the live map can follow: the file grown to its new size first (new
 * clusters read as zeros, as the guest saw them while unallocated), new
 * container tables, then the known ones (they map the new clusters), then
 * data and mapping blocks, inode-table blocks last. Also checks that what
 * applyWrite returns is exactly what changed in the map (`badChanges`).
 */
export async function replayImage(live: string, after: string): Promise<{ wrong: string[]; badChanges: string[]; changes: ClassChange[]; written: number }> {
  const a = fs.readFileSync(live)
  const b = fs.readFileSync(after)
  const bs = FILE_BLOCK
  const insAfter = await inspectImage(after)
  const fresh = ImageMap.fromInspection(insAfter, after)
  const map = ImageMap.fromInspection(await inspectImage(live), live)
  const afterRegions = insAfter.disk.regions().filter((r) => r.file === 0)
  const beforeRegions = map.inspection!.disk.regions().filter((r) => r.file === 0)
  const inRegions = (list: typeof afterRegions, k: number) => list.some((r) => r.offset < (k + 1) * bs && k * bs < r.offset + r.length)
  const changed: number[] = []
  for (let k = 0; k < Math.ceil(b.length / bs); k++) {
    const old = k * bs < a.length ? a.subarray(k * bs, (k + 1) * bs) : Buffer.alloc(0)
    if (!b.subarray(k * bs, (k + 1) * bs).equals(old)) changed.push(k)
  }
  const rank = (k: number) => {
    if (inRegions(afterRegions, k)) return inRegions(beforeRegions, k) ? 1 : 0
    return map.classOf(k) === BlockClass.InodeTable || fresh.classOf(k) === BlockClass.InodeTable ? 3 : 2
  }
  const order = changed.map((k) => [rank(k), k]).sort((x, y) => x[0] - y[0] || x[1] - y[1]).map((x) => x[1])
  const blocks = Math.ceil(b.length / bs)
  const tracked: BlockClass[] = []
  for (let k = 0; k < blocks; k++) tracked.push(map.classOf(k))
  const badChanges: string[] = []
  const changes: ClassChange[] = []
  const fd = fs.openSync(live, 'r+')
  try {
    if (b.length > a.length) fs.ftruncateSync(fd, b.length)
    for (const k of order) {
      const nb = Buffer.from(b.subarray(k * bs, (k + 1) * bs))
      for (const ch of await map.applyWrite(k * bs, nb)) {
        changes.push(ch)
        for (let j = ch.start; j < ch.start + ch.count; j++) {
          if (tracked[j] !== ch.from && badChanges.length < 10) badChanges.push(`block ${j}: reported from ${className(ch.from)}, was ${className(tracked[j])}`)
          tracked[j] = ch.to
        }
      }
      fs.writeSync(fd, nb, 0, nb.length, k * bs)
    }
  } finally {
    fs.closeSync(fd)
  }
  const wrong: string[] = []
  for (let k = 0; k < blocks; k++) {
    if (map.classOf(k) !== tracked[k] && badChanges.length < 10) badChanges.push(`block ${k}: map ${className(map.classOf(k))}, reported changes give ${className(tracked[k])}`)
    if (map.classOf(k) !== fresh.classOf(k) && wrong.length < 10) wrong.push(`block ${k}: live ${className(map.classOf(k))}, fresh ${className(fresh.classOf(k))}`)
  }
  if (!fs.readFileSync(live).equals(b)) wrong.push('the replayed file differs from the changed one')
  await map.close()
  await fresh.close()
  return { wrong, badChanges, changes, written: order.length }
}
