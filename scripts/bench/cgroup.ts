// Guests with bounded memory (issue 18, item 5). A VM's page cache is bounded
// by its RAM; the rig's "guest" is the host kernel, whose page cache would
// keep a whole file set after one read. Every guest workload therefore runs
// in a cgroup v1 memory group of the VM's size: page-cache pages are charged
// to the group of the process that reads them, so what the guest caches is
// bounded as in a VM of that size (a 128 MiB group reading a 2 GiB file stays
// at 128 MiB, page cache included).

import fs from 'fs'
import path from 'path'

const ROOT = '/sys/fs/cgroup/memory'
const PARENT = path.join(ROOT, 'vmdi-bench')

export interface VmMemory {
  /** The group's directory. */
  dir: string
  bytes: number
  /** `cmd args` as a command that joins the group first (sh: `echo $$ > cgroup.procs; exec cmd args`). */
  wrap(cmd: string, args: string[]): { cmd: string; args: string[] }
  /** The group's peak use (memory.max_usage_in_bytes), page cache included. */
  peakBytes(): number
  /** Removes the group (its pages are charged to the parent); its processes must have ended. */
  remove(): void
}

/** Whether the cgroup v1 memory controller is mounted where the rig expects it. */
export function memoryCgroupsAvailable(): boolean {
  return fs.existsSync(path.join(ROOT, 'cgroup.procs'))
}

/** A memory group of `bytes` for the VM `name` (made afresh: a leftover of an earlier run is removed first). */
export function vmMemory(name: string, bytes: number): VmMemory {
  if (!memoryCgroupsAvailable()) throw new Error(`no cgroup v1 memory controller at ${ROOT}: run with --vm-memory off`)
  fs.mkdirSync(PARENT, { recursive: true })
  const dir = path.join(PARENT, name.replace(/[^A-Za-z0-9_.-]/g, '_'))
  removeGroup(dir)
  fs.mkdirSync(dir)
  fs.writeFileSync(path.join(dir, 'memory.limit_in_bytes'), String(bytes))
  const got = Number(fs.readFileSync(path.join(dir, 'memory.limit_in_bytes'), 'utf8'))
  if (Math.abs(got - bytes) > 4096) throw new Error(`${dir}: memory.limit_in_bytes is ${got}, not ${bytes}`)
  return {
    dir,
    bytes,
    wrap: (cmd, args) => ({ cmd: '/bin/sh', args: ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', dir, cmd, ...args] }),
    peakBytes: () => Number(fs.readFileSync(path.join(dir, 'memory.max_usage_in_bytes'), 'utf8')),
    remove: () => removeGroup(dir),
  }
}

function removeGroup(dir: string): void {
  if (!fs.existsSync(dir)) return
  for (let i = 0; i < 50; i++) {
    try {
      fs.rmdirSync(dir)
      return
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return
      // EBUSY: a process is still leaving it.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100)
    }
  }
  throw new Error(`could not remove the memory group ${dir}: processes are still in it (${fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').trim().replace(/\n/g, ' ')})`)
}
