// What a test asks a running daemon, typed by src/control/protocol.ts: `stats`,
// `status` and `destage` through the built CLI (`--json`, as an admin would),
// and the live map (a control-socket request with no CLI command) through the
// built protocol module in a child process. Each throws with the daemon's or
// the CLI's message when the request fails.
import { execFileSync } from 'child_process'
import path from 'path'
import type { DestageAnswer, ImageStats, MapAnswer, StatsAnswer, StatusAnswer } from '../../src/control/protocol'
import { ROOT, runCli } from './cli'

function askCli<T>(args: string[]): T {
  const r = runCli(args)
  if (r.status !== 0) throw new Error(`vmdi-fuse ${args.join(' ')} exited ${r.status}: ${r.stderr.trim()}`)
  return JSON.parse(r.stdout) as T
}

/** `vmdi-fuse stats MNT --json`. */
export function stats(mnt: string): StatsAnswer {
  return askCli<StatsAnswer>(['stats', mnt, '--json'])
}

/** The stats of one attached image (by path relative to the store; default: the first attached), or undefined. */
export function imageStats(mnt: string, image?: string): ImageStats | undefined {
  const images: ImageStats[] = stats(mnt).images
  return image === undefined ? images[0] : images.find((i) => i.path === image)
}

/**
 * Waits until an image (by path; default: the first attached) satisfies `ready`, asking
 * every 100 ms; a stats request that fails meanwhile counts as not yet. Returns its stats.
 */
export async function waitForImage(mnt: string, ready: (im: ImageStats) => boolean, opts: { image?: string; ms?: number; what?: string } = {}): Promise<ImageStats> {
  const end = Date.now() + (opts.ms ?? 30_000)
  let last = 'no answer yet'
  for (;;) {
    try {
      const im = imageStats(mnt, opts.image)
      if (im && ready(im)) return im
      last = im ? `scan ${JSON.stringify(im.scan)}` : 'not attached'
    } catch (e) {
      last = (e as Error).message
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${opts.what ?? 'the image'} (${opts.image ?? 'first image'}: ${last})`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** `vmdi-fuse status MNT --json`. */
export function status(mnt: string): StatusAnswer {
  return askCli<StatusAnswer>(['status', mnt, '--json'])
}

/** `vmdi-fuse destage MNT [IMAGE] --json`: blocks written back per image. */
export function destage(mnt: string, image?: string): DestageAnswer {
  return askCli<DestageAnswer>(['destage', mnt, ...(image === undefined ? [] : [image]), '--json'])
}

/** The live map of an image: `{"cmd":"map"}` on the control socket (no CLI command: tests and debugging). */
export function liveMap(mnt: string, image: string): MapAnswer {
  const dist = path.join(ROOT, 'dist', 'src')
  const script =
    `const {readRecord}=require(${JSON.stringify(path.join(dist, 'fuse', 'runtime.js'))});` +
    `const {askControl}=require(${JSON.stringify(path.join(dist, 'control', 'protocol.js'))});` +
    `const rec=readRecord(require('fs').realpathSync(process.argv[1]));` +
    `if(!rec){console.error('no vmdi-fuse record for '+process.argv[1]);process.exit(1)}` +
    `askControl(rec.socket,{cmd:'map',image:process.argv[2]}).then(x=>process.stdout.write(JSON.stringify(x)),e=>{console.error(e.message);process.exit(1)})`
  return JSON.parse(execFileSync(process.execPath, ['-e', script, mnt, image], { encoding: 'utf8', maxBuffer: 256 << 20 })) as MapAnswer
}

/** Every 4 KiB file block the live map's runs cover. */
export function mapBlocks(map: MapAnswer): Set<number> {
  const out = new Set<number>()
  for (const [first, count] of map.runs) for (let b = first; b < first + count; b++) out.add(b)
  return out
}
