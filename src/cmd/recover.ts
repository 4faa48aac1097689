// `vmdi-fuse recover --apply|--discard IMAGE`: resolves an image the mount
// refused because it changed on the HDD while the SSD store still held
// unwritten (dirty) blocks of it. Offline: the store must not be mounted.
//   --apply    writes the store's dirty blocks over the image file (what the
//              guest last wrote through the mount wins), then takes the file's
//              current identity as the image's;
//   --discard  forgets every block and the map of the image (the file as it
//              is on the HDD wins).
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { CliError } from '../errors'
import { defaultSsdPath } from '../settings'
import { RUNTIME_DIR, pidAlive, type RuntimeRecord } from '../fuse/runtime'
import { BLOCK } from '../store/ram'
import { SsdStore } from '../store/ssd'

export interface RecoverOptions {
  apply?: boolean
  discard?: boolean
  ssd?: string
  json?: boolean
}

function findSsd(image: string): string | null {
  for (let d = path.dirname(image); ; d = path.dirname(d)) {
    const p = defaultSsdPath(d)
    if (fs.existsSync(p)) return p
    if (d === path.dirname(d)) return null
  }
}

function runningOver(image: string): RuntimeRecord | null {
  let names: string[] = []
  try {
    names = fs.readdirSync(RUNTIME_DIR).filter((n) => n.endsWith('.json'))
  } catch {
    return null
  }
  for (const n of names) {
    try {
      const rec = JSON.parse(fs.readFileSync(path.join(RUNTIME_DIR, n), 'utf8')) as RuntimeRecord
      const rel = path.relative(rec.store, image)
      if (!rel.startsWith('..') && !path.isAbsolute(rel) && pidAlive(rec.pid)) return rec
    } catch {
      /* not a record */
    }
  }
  return null
}

export async function runRecover(image: string, o: RecoverOptions): Promise<void> {
  if (Boolean(o.apply) === Boolean(o.discard)) throw new CliError('recover needs exactly one of --apply (write the SSD store\'s blocks over the image) or --discard (drop them)', 2)
  let abs: string
  try {
    abs = fs.realpathSync(image)
  } catch {
    if (o.apply) throw new CliError(`${image} does not exist: --apply needs the image file; use --discard to drop the store's blocks of a vanished image`)
    abs = path.resolve(image)
  }
  const rec = runningOver(abs)
  if (rec) throw new CliError(`${abs} is inside the store ${rec.store}, mounted on ${rec.mountpoint} by pid ${rec.pid}: unmount it first (vmdi-fuse umount ${rec.mountpoint})`)
  const ssdPath = o.ssd ? path.resolve(o.ssd) : findSsd(abs)
  if (!ssdPath || !fs.existsSync(ssdPath)) throw new CliError(`no SSD store found for ${abs}${o.ssd ? ` at ${o.ssd}` : ''}: give the one the mount used with --ssd PATH`)
  let ssd: SsdStore
  try {
    ssd = SsdStore.open(ssdPath)
  } catch (e) {
    throw new CliError((e as Error).message)
  }
  try {
    const id = ssd.imageId(abs)
    if (id === null) throw new CliError(`the SSD store ${ssdPath} holds nothing of ${abs}: nothing to recover`)
    const dirty = ssd.dirtyBlocks(id)
    if (o.discard) {
      ssd.forgetImage(id)
      await ssd.commit()
      report(o, { image: abs, ssd: ssdPath, action: 'discard', blocks: dirty.length }, `recover: dropped ${dirty.length} unwritten block(s) and the map of ${abs} from ${ssdPath}; the HDD file stands as it is`)
      return
    }
    const fd = fs.openSync(abs, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW)
    try {
      // As the destage does: the last block is trimmed to the file's size (a VHD ends in a 512-byte
      // footer), and blocks past the end are not written (a truncate the store had not seen dropped them).
      const size = fs.fstatSync(fd).size
      for (const b of dirty) {
        const len = Math.min(BLOCK, size - b * BLOCK)
        const blk = len > 0 ? ssd.get(id, b) : null
        if (blk) fs.writeSync(fd, blk.data, 0, len, b * BLOCK)
      }
      fs.fsyncSync(fd)
      for (const b of dirty) ssd.markClean(id, b)
      const st = fs.fstatSync(fd)
      const head = Buffer.alloc(BLOCK)
      fs.readSync(fd, head, 0, BLOCK, 0)
      ssd.adoptIdentity(id, { path: abs, dev: st.dev, ino: st.ino, size: st.size, signature: crypto.createHash('sha256').update(head).digest() })
      await ssd.commit()
    } finally {
      fs.closeSync(fd)
    }
    report(o, { image: abs, ssd: ssdPath, action: 'apply', blocks: dirty.length }, `recover: wrote ${dirty.length} block(s) from ${ssdPath} over ${abs}; the mount will take it as it is now`)
  } finally {
    await ssd.close()
  }
}

function report(o: RecoverOptions, json: Record<string, unknown>, line: string): void {
  process.stdout.write(o.json ? JSON.stringify(json) + '\n' : line + '\n')
}
