// The mount re-exported over NFS in user space: NFS-Ganesha (FSAL_VFS) with the
// config `vmdi-fuse export --ganesha --full` prints, rpcbind, and libnfs clients
// (nfs-ls, nfs-cat, nfs-cp, and our native/tools/nfs-pwrite.c for in-place
// writes and a handle held across a server restart). NFSv4 for reads, NFSv3 for
// writes (Debian's libnfs 4.0 fails NFSv4 writes over 3,750 bytes).
// Skipped, with the reason, only when ganesha.nfsd cannot start here.
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest'
import { execFileSync, spawnSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import path from 'path'
import { mount, Mounted, tmpdir } from '../helpers/mount'
import { destage, imageStats, waitForImage } from '../helpers/control'
import { runCli } from '../helpers/cli'
import { buildNfsPwrite, changedRuns, Ganesha, HeldHandle, nfsCat, nfsCp, nfsLs, nfsPwrite, nfsToolsMissing, nfsUrl, startRpcbind } from '../../scripts/nfs-rig'

const PSEUDO = '/ds'
let base: string
let store: string
let pwrite: string
let m: Mounted | null = null
let ganesha: Ganesha | null = null
let rpcbind: { stop(): Promise<void> } | null = null
let skipReason: string | null = null
let want: Buffer // the image as the in-place rewrite must leave it

function skipIfNoGanesha(ctx: TestContext): void {
  if (skipReason) ctx.skip(skipReason)
}

function dropCaches(): void {
  execFileSync('sync')
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3')
}

/** `vmdi-fuse export --ganesha --full` for the mount, written to a config file in `dir`. */
function exportConfig(mnt: string, dir: string): { conf: string; stderr: string } {
  const rec = path.join(dir, 'recovery')
  fs.mkdirSync(rec, { recursive: true })
  const r = runCli(['export', '--ganesha', '--full', '--pseudo', PSEUDO, '--recovery-root', rec, mnt])
  if (r.status !== 0) throw new Error(`vmdi-fuse export exited ${r.status}: ${r.stderr}`)
  const conf = path.join(dir, 'ganesha.conf')
  fs.writeFileSync(conf, r.stdout)
  return { conf, stderr: r.stderr }
}

/** Mounts the store (with `args`), writes the export's config and starts Ganesha on it. */
async function serve(name: string, args: string[]): Promise<string> {
  // What a failed test before left running goes first (one Ganesha at a time: the ports are fixed).
  await ganesha?.stop()
  await m?.stop()
  const dir = path.join(base, name)
  fs.mkdirSync(dir, { recursive: true })
  m = await mount(store, path.join(dir, 'mnt'), args)
  const { conf, stderr } = exportConfig(m.mnt, dir)
  ganesha = new Ganesha(conf, dir, PSEUDO)
  await ganesha.start()
  return stderr
}

/** Stops Ganesha first: it holds the export root open, so the mount could not be unmounted cleanly. */
async function unserve(): Promise<void> {
  await ganesha?.stop()
  ganesha = null
  if (m) {
    const mm = m
    m = null
    expect(await mm.stop()).toBe(0)
  }
}

beforeAll(async () => {
  const missing = nfsToolsMissing()
  if (missing) throw new Error(`the NFS rig needs its packages (scripts/setup.sh): ${missing}`)
  base = tmpdir('vmdi-nfs-')
  pwrite = buildNfsPwrite(base)
  store = path.join(base, 'store')
  fs.mkdirSync(path.join(store, 'dir'), { recursive: true })
  fs.writeFileSync(path.join(store, 'a.bin'), crypto.randomBytes(3 << 20))
  fs.writeFileSync(path.join(store, 'dir', 'notes.txt'), 'written on the store\n'.repeat(100))
  // An ext4 image with files, and the same image after a change made offline (debugfs: a new
  // directory and file, so inode table, bitmaps, directories, descriptors and data all change).
  const tree = path.join(base, 'tree')
  fs.mkdirSync(path.join(tree, 'etc'), { recursive: true })
  for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(tree, 'etc', `f${i}`), crypto.randomBytes(1000 + i * 3000))
  const img = path.join(store, 'vm.img')
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, img, '64M'])
  const after = path.join(base, 'want.img')
  fs.copyFileSync(img, after)
  const payload = path.join(base, 'payload')
  fs.writeFileSync(payload, crypto.randomBytes(300_000))
  execFileSync('debugfs', ['-w', '-R', 'mkdir /new', after], { stdio: 'ignore' })
  execFileSync('debugfs', ['-w', '-R', `write ${payload} /new/payload`, after], { stdio: 'ignore' })
  const fsck = spawnSync('e2fsck', ['-fn', after], { encoding: 'utf8' })
  if (fsck.status !== 0) throw new Error(`the wanted image is not clean to begin with:\n${fsck.stdout}`)
  want = fs.readFileSync(after)

  rpcbind = await startRpcbind()
  try {
    await serve('nfs', ['--nfs'])
  } catch (e) {
    const msg = (e as Error).message
    // Ganesha that dies at start for want of something this machine lacks is a skip; a config it
    // rejects (ours: ":CONFIG :CRIT" lines, an export it cannot create) is a failure.
    const glog = ganesha ? fs.readFileSync(ganesha.log, 'utf8') : ''
    if (/ganesha\.nfsd exited/.test(msg) && !/:CONFIG :CRIT|Could not create export/.test(glog)) skipReason = `NFS-Ganesha cannot start in this environment: ${msg}`
    else throw e
  }
})

afterAll(async () => {
  await ganesha?.stop()
  if (m) await m.stop()
  await rpcbind?.stop()
  if (base) fs.rmSync(base, { recursive: true, force: true })
})

describe('vmdi-fuse export --ganesha', () => {
  it('refuses a directory that is not a vmdi-fuse mount, and needs --ganesha', () => {
    const r = runCli(['export', '--ganesha', base])
    expect(r.status).toBe(1)
    expect(r.stderr).toMatch(/nothing is mounted on .*: mount it with vmdi-fuse --nfs STORE/)
    const proc = runCli(['export', '--ganesha', '/proc'])
    expect(proc.stderr).toMatch(/\/proc is a proc mount, not vmdi-fuse/)
    expect(runCli(['export', base]).status).toBe(2)
  })

  it('prints an EXPORT block for the mount, with --full a whole config; no warning with --nfs', (ctx) => {
    skipIfNoGanesha(ctx)
    const r = runCli(['export', '--ganesha', '--export-id', '7', '--pseudo', '/vms', m!.mnt])
    expect(r.status).toBe(0)
    expect(r.stderr).toBe('')
    expect(r.stdout).toContain(`Path = "${fs.realpathSync(m!.mnt)}";`)
    expect(r.stdout).toMatch(/Export_Id = 7;[\s\S]*Pseudo = "\/vms";[\s\S]*FSAL \{ Name = VFS; \}/)
    expect(r.stdout).not.toContain('NFS_CORE_PARAM')
    const full = fs.readFileSync(ganesha!.conf, 'utf8')
    for (const k of ['NFS_CORE_PARAM', 'Graceless = true;', 'Only_Numeric_Owners = true;', 'Active_krb5 = false;', 'Plugins_Dir', 'EXPORT {']) expect(full).toContain(k)
  })
})

describe('the mount exported by NFS-Ganesha', () => {
  it('lists the store over NFSv3 and NFSv4', (ctx) => {
    skipIfNoGanesha(ctx)
    for (const v of [3, 4] as const) {
      expect(nfsLs(nfsUrl(PSEUDO, '', v)).sort()).toEqual(['a.bin', 'dir', 'vm.img'])
      expect(nfsLs(nfsUrl(PSEUDO, 'dir', v))).toEqual(['notes.txt'])
    }
  })

  it('reads images and files over NFSv3 and NFSv4: the bytes of the store', async (ctx) => {
    skipIfNoGanesha(ctx)
    for (const v of [3, 4] as const) {
      for (const f of ['a.bin', 'vm.img', 'dir/notes.txt']) {
        expect(nfsCat(nfsUrl(PSEUDO, f, v)).equals(fs.readFileSync(path.join(store, f))), `${f} over NFSv${v}`).toBe(true)
      }
    }
    // The image was opened through the mount: it is attached and introspected.
    const im = await waitForImage(m!.mnt, (i) => i.scan.state === 'done', { image: 'vm.img', what: 'the scan of vm.img' })
    expect(im.scan.format).toMatch(/^raw\//)
  })

  it('writes new files over NFSv3 (nfs-cp): on the store, byte for byte', (ctx) => {
    skipIfNoGanesha(ctx)
    for (const [name, size] of [['small.bin', 1000], ['big.bin', 5 << 20]] as const) {
      const local = path.join(base, name)
      fs.writeFileSync(local, crypto.randomBytes(size))
      nfsCp(local, nfsUrl(PSEUDO, name, 3))
      expect(fs.readFileSync(path.join(store, name)).equals(fs.readFileSync(local)), name).toBe(true)
      expect(nfsCat(nfsUrl(PSEUDO, name, 4)).equals(fs.readFileSync(local)), `${name} read back over NFSv4`).toBe(true)
    }
    // nfs-cp cannot overwrite (NFS3ERR_EXIST): the reason for our own client.
    expect(() => nfsCp(path.join(base, 'small.bin'), nfsUrl(PSEUDO, 'small.bin', 3))).toThrow()
  })

  it('a file handle held across a Ganesha restart and drop_caches resolves to the same file (--nfs)', async (ctx) => {
    skipIfNoGanesha(ctx)
    const bytes = fs.readFileSync(path.join(store, 'a.bin'))
    const h = new HeldHandle(pwrite, nfsUrl(PSEUDO, 'a.bin', 3))
    try {
      await h.opened()
      expect(await h.read(1 << 20, 4096)).toEqual(bytes.subarray(1 << 20, (1 << 20) + 4096))
      await ganesha!.stop()
      dropCaches()
      await ganesha!.start()
      const again = await h.read(2 << 20, 4096)
      expect(again instanceof Error ? again.message : 'bytes').toBe('bytes')
      expect(again).toEqual(bytes.subarray(2 << 20, (2 << 20) + 4096))
    } finally {
      await h.close()
    }
  })

  it('rewrites an ext4 image in place over NFSv3; after destage and unmount e2fsck is clean and the bytes are as written', async (ctx) => {
    skipIfNoGanesha(ctx)
    const img = path.join(store, 'vm.img')
    const runs = changedRuns(fs.readFileSync(img), want)
    expect(runs.length).toBeGreaterThan(3)
    const url = nfsUrl(PSEUDO, 'vm.img', 3)
    for (const [off, len] of runs) nfsPwrite(pwrite, url, off, want.subarray(off, off + len))
    // Read-your-writes over NFS, then the mount held meta-data writes back and writes them to the HDD.
    expect(nfsCat(nfsUrl(PSEUDO, 'vm.img', 4)).equals(want)).toBe(true)
    const im = imageStats(m!.mnt, 'vm.img')!
    expect(Object.values(im.classes).reduce((n, c) => n + c.redirected, 0)).toBeGreaterThan(0)
    destage(m!.mnt)
    const done = imageStats(m!.mnt, 'vm.img')!
    expect(done.dirtyBlocks).toBe(0)
    expect(done.destaged).toBeGreaterThan(0)
    await unserve()
    const fsck = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' })
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0)
    expect(fs.readFileSync(img).equals(want)).toBe(true)
  })

  it('control: without --nfs the held handle goes stale after the same restart and drop_caches', async (ctx) => {
    skipIfNoGanesha(ctx)
    const warning = await serve('plain', [])
    expect(warning).toMatch(/is not mounted with --nfs: NFS file handles go stale/)
    const bytes = fs.readFileSync(path.join(store, 'a.bin'))
    const h = new HeldHandle(pwrite, nfsUrl(PSEUDO, 'a.bin', 3))
    try {
      await h.opened()
      expect(await h.read(0, 4096)).toEqual(bytes.subarray(0, 4096))
      await ganesha!.stop()
      dropCaches()
      await ganesha!.start()
      const again = await h.read(0, 4096)
      expect(again).toBeInstanceOf(Error)
    } finally {
      await h.close()
    }
    await unserve()
  })
})
