// The control socket's protocol (/run/vmdi-fuse/<id>.sock, root only): one
// JSON request per line, {"cmd": ...}, one JSON answer line, {ok, result} or
// {ok: false, error}. The transport is src/fuse/runtime.ts (serveControl,
// requestControl); this file types what travels over it, once, for the
// daemon, the CLI, the benchmarks and the tests.
import type Fuse from 'fuse-native'
import { requestControl } from '../fuse/runtime'
import type { DatapathStats, ImageEntry } from '../placement/datapath'
import type { HddStats } from '../store/hdd-model'

export type ControlRequest =
  | { cmd: 'status' }
  | { cmd: 'stats' }
  /** The live map of one image (tests and debugging); `image` relative to the store. */
  | { cmd: 'map'; image: string }
  /** Write back what the SSD store holds of every image, or of `image` (relative to the store). */
  | { cmd: 'destage'; image?: string }

export type ControlCommand = ControlRequest['cmd']

/** `vmdi-fuse status --json`. */
export interface StatusAnswer {
  pid: number
  version: string
  store: string
  mountpoint: string
  /** The libfuse options the mount runs with. */
  options: string[]
  openFiles: number
  inFlight: number
  /** Operations served and failed, by op name. */
  ops: Record<string, number>
  errors: Record<string, number>
  threads: ReturnType<Fuse['threadStats']>
  direct: ReturnType<Fuse['directStats']>
  ramNative: ReturnType<Fuse['ramStats']>
  /** null: --no-introspect. */
  datapath: { images: number; dirtyBlocks: number } | null
  /** Per attached image: its scan's and preload's progress (empty for --no-introspect). */
  images: { path: string; scan: ImageStats['scan']['state']; progress: ImageStats['progress'] }[]
  memory: NodeJS.MemoryUsage
}

/** The emulated disk's counters (--emulate-hdd), with its profile's name. */
export type HddAnswer = { profile: string } & HddStats

/** `vmdi-fuse stats --json` of a --no-introspect mount. */
export interface PassthroughStats {
  mode: 'passthrough'
  ram: null
  ssd: null
  images: []
  refused: []
}

/** `vmdi-fuse stats --json`: the datapath's counters (README, "the datapath"), and the emulated disk's or null. */
export type StatsAnswer = (DatapathStats | PassthroughStats) & { hdd: HddAnswer | null }

/** One image's stats entry. */
export type ImageStats = DatapathStats['images'][number]

export interface MapAnswer {
  path: string
  scan: ImageEntry['scan']
  /** Runs of 4 KiB file blocks: [first block, count, class name]. */
  runs: [number, number, string][]
}

/** Blocks written back, per image. */
export type DestageAnswer = { path: string; blocks: number }[]

export interface ControlAnswers {
  status: StatusAnswer
  stats: StatsAnswer
  map: MapAnswer
  destage: DestageAnswer
}

export type AnswerTo<R extends ControlRequest> = ControlAnswers[R['cmd']]

/** The daemon's side: one function per request kind. */
export type ControlHandlers = { [K in ControlCommand]: (req: Extract<ControlRequest, { cmd: K }>) => ControlAnswers[K] | Promise<ControlAnswers[K]> }

/** A request as it arrived on the socket, checked; throws naming what is wrong. */
export function parseRequest(raw: unknown): ControlRequest {
  const r = (typeof raw === 'object' && raw !== null ? raw : {}) as Record<string, unknown>
  switch (r.cmd) {
    case 'status':
    case 'stats':
      return { cmd: r.cmd }
    case 'map':
      if (typeof r.image !== 'string') throw new Error('a map request names its image: {"cmd":"map","image":"vm1.img"}')
      return { cmd: 'map', image: r.image }
    case 'destage':
      return typeof r.image === 'string' ? { cmd: 'destage', image: r.image } : { cmd: 'destage' }
    default:
      throw new Error(`unknown request ${JSON.stringify(r.cmd)}`)
  }
}

/** Routes a raw request to its handler (the daemon's serveControl handler). */
export function dispatch(handlers: ControlHandlers, raw: unknown): unknown {
  const req = parseRequest(raw)
  // One handler per kind; TypeScript cannot narrow the pair through the index, the switch in parseRequest did.
  return (handlers[req.cmd] as (r: ControlRequest) => unknown)(req)
}

/** The client's side: one typed request to the daemon listening on `socket`. */
export async function askControl<R extends ControlRequest>(socket: string, req: R, timeoutMs?: number): Promise<AnswerTo<R>> {
  return (await requestControl(socket, req as unknown as Record<string, unknown>, timeoutMs)) as AnswerTo<R>
}
