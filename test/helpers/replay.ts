// The live map's oracle: an ExtFs scanned from the image before some changes
// the kernel's own ext driver made, fed every changed block through update()
// (data and mapping blocks first, inode-table blocks last, as a guest's
// writeback often orders them), against a fresh scan of the image after.
import { BlockClass, className } from '../../src/introspect/classes'
import { type ExtFs, type ExtScanOptions, scanExt } from '../../src/introspect/fs/ext'
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
