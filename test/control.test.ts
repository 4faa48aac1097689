// The control socket's protocol (src/control/protocol.ts): requests checked and
// routed to one handler per kind, answers back over a real unix socket.
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, describe, expect, it } from 'vitest'
import { askControl, dispatch, parseRequest, type ControlHandlers, type StatsAnswer } from '../src/control/protocol'
import { serveControl } from '../src/fuse/runtime'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-control-'))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const passthrough: StatsAnswer = { mode: 'passthrough', ram: null, ssd: null, images: [], refused: [], hdd: null }

/** Handlers that say which one ran and with what. */
function recording(): { handlers: ControlHandlers; calls: string[] } {
  const calls: string[] = []
  const handlers: ControlHandlers = {
    status: () => {
      calls.push('status')
      throw new Error('status is not wanted here')
    },
    stats: () => {
      calls.push('stats')
      return passthrough
    },
    map: (req) => {
      calls.push(`map ${req.image}`)
      return { path: req.image, scan: { state: 'done', ms: 1, tries: 1, error: null, format: 'raw', mapBytes: 31, warm: true, restored: false }, runs: [[0, 2, 'superblock']] }
    },
    destage: async (req) => {
      calls.push(`destage ${req.image ?? '(all)'}`)
      return [{ path: req.image ?? 'a.img', blocks: 3 }]
    },
  }
  return { handlers, calls }
}

describe('parseRequest', () => {
  it('takes the four kinds and keeps only their fields', () => {
    expect(parseRequest({ cmd: 'status', extra: 1 })).toEqual({ cmd: 'status' })
    expect(parseRequest({ cmd: 'stats' })).toEqual({ cmd: 'stats' })
    expect(parseRequest({ cmd: 'map', image: 'vm1.img' })).toEqual({ cmd: 'map', image: 'vm1.img' })
    expect(parseRequest({ cmd: 'destage' })).toEqual({ cmd: 'destage' })
    expect(parseRequest({ cmd: 'destage', image: 'vm1.img' })).toEqual({ cmd: 'destage', image: 'vm1.img' })
    expect(parseRequest({ cmd: 'destage', image: 7 })).toEqual({ cmd: 'destage' })
  })

  it('refuses unknown kinds, a map without its image, and what is not an object', () => {
    expect(() => parseRequest({ cmd: 'reboot' })).toThrow('unknown request "reboot"')
    expect(() => parseRequest({})).toThrow('unknown request undefined')
    expect(() => parseRequest(null)).toThrow('unknown request undefined')
    expect(() => parseRequest('stats')).toThrow('unknown request undefined')
    expect(() => parseRequest({ cmd: 'map' })).toThrow(/a map request names its image/)
  })
})

describe('dispatch', () => {
  it('runs the handler of the request\'s kind, with the checked request', async () => {
    const { handlers, calls } = recording()
    expect(dispatch(handlers, { cmd: 'stats' })).toEqual(passthrough)
    expect(await dispatch(handlers, { cmd: 'destage', image: 'b.img' })).toEqual([{ path: 'b.img', blocks: 3 }])
    expect(calls).toEqual(['stats', 'destage b.img'])
    expect(() => dispatch(handlers, { cmd: 'nope' })).toThrow('unknown request "nope"')
    expect(calls).toHaveLength(2)
  })
})

describe('askControl over serveControl', () => {
  it('carries typed requests and answers, and the handler\'s error as the rejection', async () => {
    const socket = path.join(dir, 'c.sock')
    const { handlers, calls } = recording()
    const server = await serveControl(socket, (raw) => dispatch(handlers, raw))
    try {
      expect(fs.statSync(socket).mode & 0o777).toBe(0o600)
      const st = await askControl(socket, { cmd: 'stats' })
      expect(st.mode).toBe('passthrough')
      const map = await askControl(socket, { cmd: 'map', image: 'vm1.img' })
      expect(map.runs).toEqual([[0, 2, 'superblock']])
      expect(await askControl(socket, { cmd: 'destage' })).toEqual([{ path: 'a.img', blocks: 3 }])
      await expect(askControl(socket, { cmd: 'status' })).rejects.toThrow('status is not wanted here')
      expect(calls).toEqual(['stats', 'map vm1.img', 'destage (all)', 'status'])
    } finally {
      server.close()
    }
  })
})
