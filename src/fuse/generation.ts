// The generation base of this daemon start (issue 16 item 3). libfuse 2's
// high-level API hands out node ids from 2 at every start, each with
// generation 0, and the kernel's FUSE file handles are (node id, generation):
// after a restart an NFS client's old handle would name whichever file got its
// node id now. Our channel (native/fuse/channel.c) adds this base to every
// generation it replies, so an earlier daemon's handles fail with ESTALE.
//
// The base is the wall clock in seconds, or one more than the last base used
// when the clock has not moved on (a restart within the second, a clock set
// back); the last one is kept in the state directory, so it also holds across
// reboots (NFS clients keep their handles across a server's reboot).
import fs from 'fs'
import path from 'path'

/** Next to the SSD stores (settings' defaultSsdPath). */
export function generationFile(): string {
  return path.join(process.env.VMDI_STATE_DIR || '/var/lib/vmdi-fuse', 'generation')
}

/** A base no earlier daemon start used (recorded before it is returned). */
export function nextGenerationBase(file = generationFile()): number {
  let last = 0
  try {
    last = Number.parseInt(fs.readFileSync(file, 'utf8'), 10) || 0
  } catch {
    /* first start on this machine */
  }
  const now = Math.floor(Date.now() / 1000)
  const base = (now > last ? now : last + 1) >>> 0
  fs.mkdirSync(path.dirname(file), { recursive: true })
  const tmp = `${file}.${process.pid}`
  const fd = fs.openSync(tmp, 'w', 0o644)
  try {
    fs.writeSync(fd, `${base}\n`)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(tmp, file)
  return base
}

/** Tells the patched binding's channel the base (before the mount answers any lookup). */
export function setGenerationBase(base: number): void {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const binding = require('node-gyp-build')(path.dirname(require.resolve('fuse-native/package.json'))) as { fuse_native_set_generation_base(b: number): void }
  binding.fuse_native_set_generation_base(base)
}
