// Hostile ext images (issue 19), built by script: a superblock made by mke2fs,
// then fields patched with Buffer code at their ext2_fs.h offsets.
import { execFileSync } from 'child_process'
import fs from 'fs'
import path from 'path'

/** The primary superblock (1024 bytes at byte 1024) of a fresh mke2fs file system. */
export function mkfsSuperblock(dir: string, args: string[], sizeMiB = 8): Buffer {
  const f = path.join(dir, `base-${args.join('_').replace(/[^a-z0-9_]/gi, '')}.img`)
  fs.rmSync(f, { force: true })
  execFileSync('truncate', ['-s', `${sizeMiB}M`, f])
  execFileSync('mke2fs', ['-q', '-F', ...args, f], { stdio: 'pipe' })
  const fd = fs.openSync(f, 'r')
  const sb = Buffer.alloc(1024)
  fs.readSync(fd, sb, 0, 1024, 1024)
  fs.closeSync(fd)
  fs.rmSync(f)
  return sb
}

function writeAt(file: string, buf: Buffer, offset: number): void {
  const fd = fs.openSync(file, 'r+')
  fs.writeSync(fd, buf, 0, buf.length, offset)
  fs.closeSync(fd)
}

/**
 * A superblock claiming 2^36 1 KiB blocks in 512-block groups (2^27 groups,
 * 64 TiB) in a 64 TiB sparse qcow2 of about 1 MiB.
 */
export function hugeGroupCountQcow2(dir: string): string {
  const sb = mkfsSuperblock(dir, ['-t', 'ext4', '-b', '1024', '-O', '64bit,^resize_inode,^metadata_csum'])
  const groups = 2 ** 27
  sb.writeUInt32LE(0, 0x4) // s_blocks_count_lo
  sb.writeUInt32LE(16, 0x150) // s_blocks_count_hi: 16 x 2^32 = 2^36 blocks
  sb.writeUInt32LE(512, 0x20) // s_blocks_per_group
  sb.writeUInt32LE(512, 0x24) // s_clusters_per_group
  sb.writeUInt32LE(16, 0x28) // s_inodes_per_group
  sb.writeUInt32LE(groups * 16, 0x0) // s_inodes_count = 2^31
  sb.writeUInt32LE(0, 0xc) // s_free_blocks_count_lo
  sb.writeUInt32LE(0, 0x158) // s_free_blocks_count_hi
  const raw = path.join(dir, 'huge-groups.raw')
  fs.rmSync(raw, { force: true })
  execFileSync('truncate', ['-s', '8M', raw])
  writeAt(raw, sb, 1024)
  const out = path.join(dir, 'huge-groups.qcow2')
  fs.rmSync(out, { force: true })
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, out])
  execFileSync('qemu-img', ['resize', '-q', out, '64T'])
  fs.rmSync(raw)
  return out
}

/**
 * A sparse raw file system of one group whose inode table is `tableGiB` GiB
 * (64 KiB blocks, s_inodes_per_group x s_inode_size): the table is all holes.
 */
export function hugeInodeTableRaw(dir: string, tableGiB: number): string {
  const sb = mkfsSuperblock(dir, ['-t', 'ext2', '-b', '4096'])
  const bs = 65536
  const isz = 32768 // the largest s_inode_size (u16, a power of two)
  const ipg = (tableGiB * 2 ** 30) / isz
  const blocks = (ipg * isz) / bs + 16
  sb.writeUInt32LE(6, 0x18) // s_log_block_size: 1024 << 6 = 64 KiB
  sb.writeUInt32LE(6, 0x1c) // s_log_cluster_size
  sb.writeUInt32LE(blocks, 0x4) // s_blocks_count_lo
  sb.writeUInt32LE(0, 0x14) // s_first_data_block
  sb.writeUInt32LE(bs * 8, 0x20) // s_blocks_per_group: one group
  sb.writeUInt32LE(bs * 8, 0x24)
  sb.writeUInt32LE(ipg, 0x28) // s_inodes_per_group
  sb.writeUInt32LE(ipg, 0x0) // s_inodes_count
  sb.writeUInt16LE(isz, 0x58) // s_inode_size
  sb.writeUInt32LE(0, 0x5c) // s_feature_compat
  sb.writeUInt32LE(0x2, 0x60) // s_feature_incompat: filetype
  sb.writeUInt32LE(0, 0x64) // s_feature_ro_compat: no uninit_bg, so every inode slot is read
  sb.writeUInt16LE(0, 0xce) // s_reserved_gdt_blocks
  const f = path.join(dir, `itable-${tableGiB}g.img`)
  fs.rmSync(f, { force: true })
  execFileSync('truncate', ['-s', String(blocks * bs), f])
  writeAt(f, sb, 1024)
  const gd = Buffer.alloc(32)
  gd.writeUInt32LE(2, 0x0) // bg_block_bitmap
  gd.writeUInt32LE(3, 0x4) // bg_inode_bitmap
  gd.writeUInt32LE(4, 0x8) // bg_inode_table
  writeAt(f, gd, bs) // the descriptor table: block 1
  return f
}

/**
 * A 64 MiB ext2 (1 KiB blocks, 8 groups, no uninit_bg: every table is read
 * whole) whose group descriptors all name group 0's inode table.
 */
export function sharedInodeTableRaw(dir: string): string {
  const f = path.join(dir, 'shared-itable.img')
  fs.rmSync(f, { force: true })
  execFileSync('truncate', ['-s', '64M', f])
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext2', '-b', '1024', '-g', '8192', '-N', '65536', '-I', '256', f], { stdio: 'pipe' })
  const fd = fs.openSync(f, 'r+')
  const sb = Buffer.alloc(1024)
  fs.readSync(fd, sb, 0, 1024, 1024)
  const groups = Math.ceil((sb.readUInt32LE(0x4) - sb.readUInt32LE(0x14)) / sb.readUInt32LE(0x20))
  const gdt = Buffer.alloc(groups * 32)
  fs.readSync(fd, gdt, 0, gdt.length, 2048)
  const t0 = gdt.readUInt32LE(0x8)
  for (let g = 1; g < groups; g++) gdt.writeUInt32LE(t0, g * 32 + 0x8)
  fs.writeSync(fd, gdt, 0, gdt.length, 2048)
  fs.closeSync(fd)
  return f
}

/** Runs `node args` under /usr/bin/time -v (killed past `timeoutMs`, exit 137): exit status, output, wall time and the child's max RSS. */
export function timed(args: string[], timeoutMs: number): { status: number | null; stdout: string; stderr: string; ms: number; maxRssKiB: number } {
  const t0 = Date.now()
  const r = require('child_process').spawnSync('/usr/bin/time', ['-v', 'timeout', '-s', 'KILL', String(Math.ceil(timeoutMs / 1000)), process.execPath, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 })
  const ms = Date.now() - t0
  const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(String(r.stderr))
  const code = /Exit status: (\d+)/.exec(String(r.stderr))
  return { status: code ? Number(code[1]) : r.status, stdout: String(r.stdout), stderr: String(r.stderr), ms, maxRssKiB: m ? Number(m[1]) : -1 }
}
