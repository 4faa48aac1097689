// Ground truth for the ext classifier from e2fsprogs itself: dumpe2fs for the
// static structures of every group (superblock backups, descriptors, reserved
// GDT, bitmaps, inode tables) and one debugfs run of `stat` for every in-use
// inode (from the inode bitmaps dumpe2fs prints) for IND/DIND/TIND/ETB
// blocks, directory, symlink, journal and special inodes' blocks, File ACL.
import { execFileSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'

export interface Oracle {
  blockSize: number
  blocksCount: number
  /** fs block → class name (data blocks of regular files are 'data'). */
  classes: Map<number, string>
  inUse: number[]
}

/** e2fsprogs' block lists ("1-5, 9, 12-14") as [first, last] pairs. */
export function ranges(s: string): [number, number][] {
  return s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean)
    .map((x) => {
      const [a, b] = x.split('-').map(Number)
      return [a, b ?? a] as [number, number]
    })
}

export function e2oracle(image: string): Oracle {
  const dump = execFileSync('dumpe2fs', [image], { encoding: 'utf8', maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'ignore'] })
  const num = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(dump)?.[1] ?? NaN)
  const blockSize = num('Block size')
  const blocksCount = num('Block count')
  const inodesPerGroup = num('Inodes per group')
  const firstIno = num('First inode')
  const journalIno = num('Journal inode') || 0
  // Quota files and the orphan file are special whatever their inode number (project quota and orphan file are not reserved inodes).
  const specialInos = new Set(['User quota inode', 'Group quota inode', 'Project quota inode', 'Orphan file inode'].map(num).filter((n) => n > 0))
  const classes = new Map<number, string>()
  const put = (a: number, b: number, cls: string) => {
    for (let x = a; x <= b; x++) classes.set(x, cls)
  }
  const mmp = /^MMP block number:\s+(\d+)/m.exec(dump)
  if (mmp) put(Number(mmp[1]), Number(mmp[1]), 'mmp')
  const inUse: number[] = []
  const groups = dump.split(/^Group (\d+): /m)
  for (let i = 1; i < groups.length; i += 2) {
    const g = Number(groups[i])
    const body = groups[i + 1]
    for (const m of body.matchAll(/(?:Primary|Backup) superblock at (\d+)/g)) put(Number(m[1]), Number(m[1]), 'superblock')
    for (const m of body.matchAll(/Group descriptors? at (\d+)(?:-(\d+))?/g)) put(Number(m[1]), Number(m[2] ?? m[1]), 'group-descriptor')
    for (const m of body.matchAll(/Reserved GDT blocks at (\d+)-(\d+)/g)) put(Number(m[1]), Number(m[2]), 'reserved-gdt')
    for (const m of body.matchAll(/Block bitmap at (\d+)/g)) put(Number(m[1]), Number(m[1]), 'block-bitmap')
    for (const m of body.matchAll(/Inode bitmap at (\d+)/g)) put(Number(m[1]), Number(m[1]), 'inode-bitmap')
    for (const m of body.matchAll(/Inode table at (\d+)-(\d+)/g)) put(Number(m[1]), Number(m[2]), 'inode-table')
    const free = /Free inodes: ([0-9, -]*)$/m.exec(body)?.[1] ?? ''
    const freeSet = new Set<number>()
    for (const [a, b] of ranges(free)) for (let x = a; x <= b; x++) freeSet.add(x)
    for (let n = g * inodesPerGroup + 1; n <= (g + 1) * inodesPerGroup; n++) if (!freeSet.has(n)) inUse.push(n)
  }
  // One debugfs run: stat of every in-use inode.
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-e2o-'))
  try {
    const cmd = path.join(tmp, 'cmd')
    fs.writeFileSync(cmd, inUse.map((n) => `stat <${n}>`).join('\n') + '\n')
    const out = execFileSync('debugfs', ['-f', cmd, image], { encoding: 'utf8', maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'ignore'] })
    const stats = out.split(/^debugfs: stat <(\d+)>$/m)
    for (let i = 1; i < stats.length; i += 2) {
      const ino = Number(stats[i])
      const s = stats[i + 1]
      const type = /Type: (\S+)/.exec(s)?.[1] ?? ''
      const acl = /File ACL: (\d+)/.exec(s)
      if (acl && Number(acl[1])) put(Number(acl[1]), Number(acl[1]), 'xattr')
      const list = /^(?:BLOCKS|EXTENTS):\n([\s\S]*?)(?:\n\n|\nTOTAL|$)/m.exec(s)?.[1] ?? ''
      let dataCls = 'data'
      if (ino === journalIno) dataCls = 'journal'
      else if (ino === 7) dataCls = '' // resize inode: its data are the reserved GDT blocks (dumpe2fs has them)
      else if ((ino < firstIno && ino !== 2) || specialInos.has(ino)) dataCls = 'special'
      else if (type === 'directory') dataCls = 'directory'
      else if (type === 'symlink') dataCls = 'symlink'
      for (const m of list.matchAll(/\(([^)]*)\):(\d+)(?:-(\d+))?/g)) {
        const what = m[1]
        const a = Number(m[2])
        const b = Number(m[3] ?? m[2])
        // The resize inode's IND blocks are the reserved GDT blocks themselves: only its DIND is its own.
        if (ino === 7 && what !== 'DIND') continue
        if (/^(IND|DIND|TIND)$/.test(what)) put(a, b, 'indirect')
        else if (/^ETB\d+$/.test(what)) put(a, b, 'extent-tree')
        else if (dataCls) {
          for (let x = a; x <= b; x++) if (dataCls !== 'data' || !classes.has(x)) classes.set(x, dataCls)
        }
      }
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true })
  }
  return { blockSize, blocksCount, classes, inUse }
}
