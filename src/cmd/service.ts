// `vmdi-fuse install-service STORE MOUNTPOINT [-- mount options]`: a systemd
// unit for one mount. Type=notify: the daemon (run with -f) sends READY=1 once
// mounted, STATUS= lines with the scans' progress and STOPPING=1 at the end
// (src/fuse/notify.ts). Ordered before the NFS servers that re-export the
// mount, after the file systems holding STORE and the SSD store. The daemon's
// own checks refuse a STORE that is not a directory (the unit fails, and after
// StartLimitBurst tries systemd stops restarting it).
import { execFileSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { CliError } from '../errors'
import { PROJECT_ROOT } from '../root'
import { defaultSsdPath } from '../settings'

export interface ServiceOptions {
  name?: string
  unitDir: string
  print?: boolean
}

/** The unit's name for a mount point: vmdi-fuse-<mount point, systemd-escaped>.service. */
export function unitName(mountpoint: string, name?: string): string {
  if (name !== undefined) {
    if (!/^[A-Za-z0-9:_.\\-]+$/.test(name)) throw new CliError(`--name ${name}: a unit name takes letters, digits and :_.\\- only`, 2)
    return name.endsWith('.service') ? name : `${name}.service`
  }
  const esc = path
    .resolve(mountpoint)
    .replace(/^\/+|\/+$/g, '')
    .split('/')
    .map((part) => part.replace(/[^A-Za-z0-9:_.]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`).replace(/^\./, '\\x2e'))
    .join('-')
  return `vmdi-fuse-${esc || '-'}.service`
}

/** A path for a unit file's space-separated lists and ExecStart: absolute, no whitespace or control characters. */
function unitPath(p: string, what: string): string {
  const abs = path.resolve(p)
  if (/[\s\x00-\x1f"'\\]/.test(abs)) throw new CliError(`${what} ${abs}: the unit file cannot name a path with spaces, quotes or backslashes; use a symlink without them`, 2)
  return abs.replace(/%/g, '%%')
}

/** One ExecStart word, quoted for systemd when it needs it (specifiers escaped). */
function word(w: string): string {
  const s = w.replace(/%/g, '%%')
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`
}

/** The SSD store's file the mount will use: --ssd's value, or the default for STORE. */
function ssdPathOf(store: string, opts: string[]): string | null {
  if (opts.includes('--no-introspect')) return null
  for (let i = 0; i < opts.length; i++) {
    if (opts[i] === '--ssd' && i + 1 < opts.length) return path.resolve(opts[i + 1])
    if (opts[i].startsWith('--ssd=')) return path.resolve(opts[i].slice('--ssd='.length))
  }
  return defaultSsdPath(path.resolve(store))
}

/** The unit file's text for mounting STORE on MOUNTPOINT with the CLI's mount options `opts`. */
export function unitText(store: string, mountpoint: string, opts: string[]): string {
  for (const o of opts) if (o === '-f' || o === '--foreground' || o === '--log' || o.startsWith('--log=')) throw new CliError(`${o}: the service always runs in the foreground and logs to the journal; leave it out`, 2)
  const s = unitPath(store, 'STORE')
  const m = unitPath(mountpoint, 'MOUNTPOINT')
  const ssd = ssdPathOf(store, opts)
  const cli = path.join(PROJECT_ROOT, 'dist', 'src', 'cli.js')
  const start = [process.execPath, cli, '-f', '--force', ...opts, s, m].map(word).join(' ')
  return [
    '# Written by vmdi-fuse install-service; edit the mount options on the ExecStart line.',
    '[Unit]',
    `Description=vmdi-fuse: ${s} on ${m}`,
    `Documentation=file://${unitPath(path.join(PROJECT_ROOT, 'README.md'), 'README')}`,
    `RequiresMountsFor=${s}${ssd ? ` ${unitPath(path.dirname(ssd), '--ssd')}` : ''}`,
    'After=local-fs.target',
    'Before=nfs-server.service nfs-ganesha.service',
    'StartLimitIntervalSec=60',
    'StartLimitBurst=3',
    '',
    '[Service]',
    'Type=notify',
    'NotifyAccess=main',
    `ExecStart=${start}`,
    `ExecStop=${[process.execPath, cli, 'umount', m].map(word).join(' ')}`,
    'Restart=on-failure',
    'RestartSec=2',
    // The clean end destages what the SSD store holds: give it time.
    'TimeoutStopSec=15min',
    'TimeoutStartSec=5min',
    'LimitNOFILE=1048576',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n')
}

export async function runInstallService(store: string, mountpoint: string, mountOpts: string[], o: ServiceOptions): Promise<void> {
  const text = unitText(store, mountpoint, mountOpts)
  if (o.print) {
    process.stdout.write(text)
    return
  }
  const name = unitName(mountpoint, o.name)
  const file = path.join(o.unitDir, name)
  fs.mkdirSync(o.unitDir, { recursive: true })
  fs.writeFileSync(file, text)
  let reloaded = false
  if (o.unitDir === '/etc/systemd/system' && fs.existsSync('/run/systemd/system')) {
    try {
      execFileSync('systemctl', ['daemon-reload'], { stdio: 'ignore' })
      reloaded = true
    } catch {
      /* said below */
    }
  }
  process.stdout.write(`vmdi-fuse: wrote ${file}${reloaded ? '' : ' (run systemctl daemon-reload)'}; start it at boot with: systemctl enable --now ${name}\n`)
}
