// systemd: the unit install-service writes passes `systemd-analyze verify`; the
// daemon speaks sd_notify on NOTIFY_SOCKET (READY=1 once mounted, STATUS=,
// STOPPING=1), to a path and to an abstract socket; the unit's ExecStart refuses
// a STORE that is not a directory without ever saying READY=1.
import { afterAll, describe, expect, it } from 'vitest'
import { ChildProcess, spawn, spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { runCli } from '../helpers/cli'
import { isMounted, mount, testDirs, tmpdir, waitFor } from '../helpers/mount'

const base = tmpdir('vmdi-service-')
afterAll(() => fs.rmSync(base, { recursive: true, force: true }))

/** A unix datagram socket bound by python3 (Node has none); every datagram as one JSON line. */
function listen(name: string): { proc: ChildProcess; messages: () => string[] } {
  const py = [
    'import json, socket, sys',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
    'n = sys.argv[1]',
    "s.bind('\\0' + n[1:] if n.startswith('@') else n)",
    "print('BOUND', flush=True)",
    'while True:',
    '    print(json.dumps(s.recv(65536).decode()), flush=True)',
  ].join('\n')
  const proc = spawn('python3', ['-c', py, name], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  proc.stdout!.on('data', (b) => (out += b))
  return { proc, messages: () => out.split('\n').filter((l) => l.startsWith('"')).map((l) => JSON.parse(l) as string) }
}

async function bound(l: { proc: ChildProcess }): Promise<void> {
  let ok = false
  l.proc.stdout!.on('data', (b) => (ok ||= String(b).includes('BOUND')))
  await waitFor(() => ok, 10_000, 'the notify socket')
}

describe('systemd', () => {
  it('install-service writes a unit that systemd-analyze verify accepts', () => {
    const d = testDirs(base, 'unit')
    const units = path.join(base, 'units')
    const r = runCli(['install-service', '--unit-dir', units, d.store, d.mnt, '--', '--nfs', '--ssd', path.join(base, 'ssd', 'v.sqlite'), '--ram-cache', '64M'])
    expect(r.stderr).toBe('')
    expect(r.status).toBe(0)
    const name = fs.readdirSync(units)[0]
    expect(r.stdout).toContain(`systemctl enable --now ${name}`)
    const text = fs.readFileSync(path.join(units, name), 'utf8')
    expect(text).toContain('Type=notify\n')
    expect(text).toContain('Restart=on-failure\n')
    expect(text).toContain('Before=nfs-server.service nfs-ganesha.service\n')
    expect(text).toContain(`RequiresMountsFor=${d.store} ${path.join(base, 'ssd')}\n`)
    expect(text).toMatch(/^ExecStart=\S+node \S+cli\.js -f --force --nfs --ssd \S+ --ram-cache 64M \S+ \S+$/m)
    expect(text).toMatch(/^ExecStop=\S+node \S+cli\.js umount \S+$/m)
    const v = spawnSync('systemd-analyze', ['verify', path.join(units, name)], { encoding: 'utf8' })
    expect(`${v.stdout}${v.stderr}`).toBe('')
    expect(v.status).toBe(0)
    // A unit systemd would reject is caught by the same check (the check can fail).
    fs.writeFileSync(path.join(units, 'broken.service'), text.replace('Type=notify', 'Type=notyfy'))
    expect(spawnSync('systemd-analyze', ['verify', path.join(units, 'broken.service')], { encoding: 'utf8' }).stderr).toMatch(/Failed to parse service type/)
  })

  for (const kind of ['path', 'abstract'] as const) {
    it(`READY=1 once mounted, STATUS= with the mount, STOPPING=1 at the end (${kind} socket)`, async () => {
      const d = testDirs(base, `notify-${kind}`)
      const sock = kind === 'path' ? path.join(base, `notify-${kind}.sock`) : `@vmdi-test-${process.pid}`
      const l = listen(sock)
      try {
        await bound(l)
        const m = await mount(d.store, d.mnt, ['--ram-cache', '64M'], { NOTIFY_SOCKET: sock })
        await waitFor(() => l.messages().length > 0, 10_000, 'READY=1')
        const ready = l.messages()[0].split('\n')
        expect(ready[0]).toBe('READY=1')
        expect(ready).toContain(`MAINPID=${m.proc.pid}`)
        expect(ready.find((x) => x.startsWith('STATUS='))).toMatch(new RegExp(`^STATUS=serving \\S+ on ${d.mnt}; 0 image\\(s\\)`))
        expect(isMounted(d.mnt)).toBe(true)
        expect(await m.stop()).toBe(0)
        await waitFor(() => l.messages().some((x) => x.startsWith('STOPPING=1')), 10_000, 'STOPPING=1')
      } finally {
        l.proc.kill()
      }
    })
  }

  it("the unit's ExecStart refuses a STORE that is not a directory, in one line, never READY", async () => {
    const file = path.join(base, 'not-a-dir')
    fs.writeFileSync(file, 'x')
    const mnt = path.join(base, 'mnt-nodir')
    fs.mkdirSync(mnt)
    const units = path.join(base, 'units-nodir')
    expect(runCli(['install-service', '--unit-dir', units, file, mnt, '--', '--ram-cache', '64M']).status).toBe(0)
    const text = fs.readFileSync(path.join(units, fs.readdirSync(units)[0]), 'utf8')
    const argv = /^ExecStart=(.*)$/m.exec(text)![1].split(' ')
    const sock = path.join(base, 'notify-nodir.sock')
    const l = listen(sock)
    try {
      await bound(l)
      const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env: { ...process.env, NOTIFY_SOCKET: sock }, timeout: 60_000 })
      expect(r.status).not.toBe(0)
      expect(r.stderr.trim().split('\n')).toEqual([`vmdi-fuse: store ${file} is not a directory: name the directory that holds the disk images`])
      await new Promise((res) => setTimeout(res, 300))
      expect(l.messages()).toEqual([])
      expect(isMounted(mnt)).toBe(false)
    } finally {
      l.proc.kill()
    }
  })
})
