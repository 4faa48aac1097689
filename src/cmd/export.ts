// `vmdi-fuse export --ganesha MOUNTPOINT`: a ready NFS-Ganesha EXPORT block for a
// running vmdi-fuse mount (with --full, a whole ganesha.conf). Ganesha serves the
// mount with FSAL_VFS, which keys files by name_to_handle_at/open_by_handle_at on
// the mount: those handles stay valid only when the mount keeps its nodes
// (--nfs: noforget, or -o remember=N), so a mount without it is named on stderr.
import fs from 'fs'
import path from 'path'
import { CliError } from '../errors'
import { askControl } from '../control/protocol'
import { readRecord } from '../fuse/runtime'

export interface ExportOptions {
  ganesha?: boolean
  full?: boolean
  pseudo?: string
  exportId?: string
  /** NFSv4 recovery directory of the --full config (Ganesha's own default). */
  recoveryRoot?: string
}

/** Where Debian and Fedora put Ganesha's FSAL plugins; the first holding libfsalvfs.so wins. */
const PLUGIN_DIRS = ['/usr/lib/x86_64-linux-gnu/ganesha', '/usr/lib/aarch64-linux-gnu/ganesha', '/usr/lib64/ganesha', '/usr/lib/ganesha']

export function pluginsDir(): string | null {
  return PLUGIN_DIRS.find((d) => fs.existsSync(path.join(d, 'libfsalvfs.so'))) ?? null
}

/** The file system type of the mount at `real` (an absolute real path), from /proc/self/mountinfo; the last mount there wins. */
export function mountTypeAt(real: string): string | null {
  let found: string | null = null
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ')
    if (f.length < 10) continue
    // Field 5 is the mount point (octal escapes for space, tab, newline, backslash); the type follows " - ".
    const at = f[4].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
    const dash = f.indexOf('-', 6)
    if (at === real && dash > 0) found = f[dash + 1]
  }
  return found
}

/** A Ganesha config string: quoted, with backslashes and quotes escaped. */
function quoted(s: string): string {
  return '"' + s.replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"'
}

export function exportBlock(mountpoint: string, store: string, pseudo: string, exportId: number): string {
  return [
    `# vmdi-fuse mount of ${store}`,
    `EXPORT {`,
    `    Export_Id = ${exportId};`,
    `    Path = ${quoted(mountpoint)};`,
    `    Pseudo = ${quoted(pseudo)};`,
    `    Protocols = 3, 4;`,
    `    Transports = TCP;`,
    `    Access_Type = RW;`,
    `    Squash = No_Root_Squash;`,
    `    SecType = sys;`,
    `    # Restrict who may mount: CLIENT { Clients = 10.0.0.0/24; Access_Type = RW; }`,
    `    FSAL { Name = VFS; }`,
    `}`,
  ].join('\n')
}

/** The rest of a ganesha.conf that serves NFSv3 and v4 over TCP without dbus, krb5, NLM or rquota (measured in FINDINGS.md). */
export function coreBlocks(plugins: string, recoveryRoot: string): string {
  return [
    `# NFS-Ganesha 4.x; start: rpcbind (for NFSv3), then ganesha.nfsd -f THIS_FILE`,
    `NFS_CORE_PARAM {`,
    `    Protocols = 3, 4;`,
    `    NFS_Port = 2049;`,
    `    MNT_Port = 20048;`,
    `    Enable_NLM = false;`,
    `    Enable_RQUOTA = false;`,
    `    Enable_UDP = false;`,
    `    # NFSv3 clients mount the Pseudo path, as NFSv4 clients do.`,
    `    mount_path_pseudo = true;`,
    `    Plugins_Dir = ${quoted(plugins)};`,
    `}`,
    `NFSv4 {`,
    `    # No grace period after a restart (no lock or open state to reclaim: NLM is off).`,
    `    Graceless = true;`,
    `    RecoveryRoot = ${quoted(recoveryRoot)};`,
    `    Only_Numeric_Owners = true;`,
    `}`,
    `NFS_KRB5 {`,
    `    Active_krb5 = false;`,
    `}`,
  ].join('\n')
}

export async function runExport(mountpoint: string, o: ExportOptions): Promise<void> {
  if (!o.ganesha) throw new CliError('say which NFS server: vmdi-fuse export --ganesha MOUNTPOINT (for knfsd see the README: /etc/exports with fsid=)', 2)
  const pseudo = o.pseudo ?? '/ds'
  if (!pseudo.startsWith('/') || /[\s"]/.test(pseudo)) throw new CliError(`--pseudo ${pseudo}: expected an absolute path without spaces or quotes, like /ds`, 2)
  const exportId = o.exportId === undefined ? 1 : Number(o.exportId)
  // Ganesha keeps Export_Id 0 for the pseudo root; it takes 16 bits.
  if (!Number.isInteger(exportId) || exportId < 1 || exportId > 65535) throw new CliError(`--export-id ${o.exportId}: expected an integer from 1 to 65535`, 2)

  let real: string
  try {
    real = fs.realpathSync(mountpoint)
  } catch {
    throw new CliError(`${mountpoint} is not reachable: is it a stale mount (vmdi-fuse --force) or a typo?`)
  }
  const type = mountTypeAt(real)
  if (type !== 'fuse.vmdi-fuse') {
    throw new CliError(type ? `${mountpoint} is a ${type} mount, not vmdi-fuse: mount it with vmdi-fuse --nfs STORE ${mountpoint} first` : `nothing is mounted on ${mountpoint}: mount it with vmdi-fuse --nfs STORE ${mountpoint} first`)
  }
  const rec = readRecord(real)
  if (!rec) throw new CliError(`no vmdi-fuse daemon record for ${mountpoint} in /run/vmdi-fuse: was it mounted by another version?`)
  let options: string[]
  try {
    options = (await askControl(rec.socket, { cmd: 'status' }, 10_000)).options
  } catch (e) {
    throw new CliError(`the daemon of ${mountpoint} (pid ${rec.pid}) does not answer on ${rec.socket}: ${(e as Error).message}`)
  }
  if (!options.some((x) => x === 'noforget' || x.startsWith('remember='))) {
    process.stderr.write(
      `vmdi-fuse: warning: ${mountpoint} is not mounted with --nfs: NFS file handles go stale once the kernel drops its caches; ` +
        `unmount it and mount again with vmdi-fuse --nfs ${rec.store} ${mountpoint}\n`,
    )
  }

  const parts: string[] = []
  if (o.full) {
    const plugins = pluginsDir()
    if (!plugins) process.stderr.write(`vmdi-fuse: warning: no Ganesha FSAL_VFS plugin found (${PLUGIN_DIRS.join(', ')}): apt-get install nfs-ganesha nfs-ganesha-vfs\n`)
    parts.push(coreBlocks(plugins ?? PLUGIN_DIRS[0], o.recoveryRoot ?? '/var/lib/nfs/ganesha'))
  }
  parts.push(exportBlock(real, rec.store, pseudo, exportId))
  process.stdout.write(parts.join('\n') + '\n')
}
