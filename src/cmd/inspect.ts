// `vmdi-fuse inspect IMAGE`: what the mount would see inside one image —
// container, volumes, file systems and the class of every block. Exit status
// 0 for an image, 2 for "not a disk image", 1 for usage and I/O errors (and
// images too corrupt to open).

import fs from 'fs'
import { CliError } from '../errors'
import { formatSize, parseSize } from '../size'
import { className } from '../introspect/classes'
import { IntrospectError } from '../introspect/errors'
import { inspectImage, whatIsAt, type InspectReport } from '../introspect/inspect'

function smallFileBytes(v: string | undefined): number {
  if (v === undefined) return 0
  try {
    return parseSize(v, '--small-files')
  } catch (e) {
    throw new CliError((e as Error).message)
  }
}

export interface InspectCliOptions {
  json?: boolean
  map?: boolean
  at?: string
  /** --small-files SIZE: class small files' data as the mount would (default 0: off). */
  smallFiles?: string
  /** --boot-files: class boot files' data as the mount does (default off here). */
  bootFiles?: boolean
  scan?: boolean
  store?: string
}

/** Scans shorter than this show no bar (VMDI_BAR_AFTER_MS overrides it: the tests draw one at once). */
const BAR_AFTER_MS = Number(process.env.VMDI_BAR_AFTER_MS ?? 1000)

/** A one-line progress bar on stderr, only when stderr is a terminal and the scan has run for BAR_AFTER_MS. */
function progressBar(): { update: (what: string, done: number, total: number) => void; end: () => void } {
  if (!process.stderr.isTTY) return { update: () => undefined, end: () => undefined }
  const t0 = Date.now()
  let last = 0
  let shown = false
  return {
    update(what, done, total) {
      const now = Date.now()
      if (now - t0 < BAR_AFTER_MS) return
      if (now - last < 100 && done < total) return
      last = now
      shown = true
      const width = 30
      const frac = total > 0 ? Math.min(1, done / total) : 0
      const bar = '#'.repeat(Math.round(frac * width)).padEnd(width, '.')
      process.stderr.write(`\r[${bar}] ${(frac * 100).toFixed(0).padStart(3)}% scanning ${what} (${formatSize(done)} of ${formatSize(total)})\x1b[K`)
    },
    end() {
      if (shown) process.stderr.write('\r\x1b[K')
    },
  }
}

function parseOffset(s: string): number {
  const m = /^(0x[0-9a-f]+|\d+)$/i.exec(s.trim())
  const n = m ? Number(s.trim()) : NaN
  if (!Number.isSafeInteger(n) || n < 0) throw new CliError(`--at ${s}: expected a byte offset (decimal or 0x hex)`)
  return n
}

export async function runInspect(image: string, o: InspectCliOptions): Promise<void> {
  try {
    const st = fs.statSync(image)
    if (!st.isFile()) throw new CliError(`${image} is not a regular file: inspect takes an image file`)
  } catch (e) {
    if (e instanceof CliError) throw e
    throw new CliError(`${image}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`)
  }
  const at = o.at !== undefined ? parseOffset(o.at) : undefined
  const bar = progressBar()
  let ins
  try {
    ins = await inspectImage(image, { storeRoot: o.store, scan: o.scan !== false, onProgress: bar.update, smallFileBytes: smallFileBytes(o.smallFiles), bootFiles: o.bootFiles === true })
  } catch (e) {
    bar.end()
    if (e instanceof IntrospectError) {
      if (e.code === 'NOT_THIS_FORMAT') throw new CliError(`${image} is not a disk image (${e.message})`, 2)
      throw new CliError(`${e.message}${e.code === 'UNSUPPORTED' ? ' (the mount serves it as a plain file)' : ''}`, 1)
    }
    throw e
  }
  bar.end()
  try {
    if (at !== undefined) {
      if (at >= fs.statSync(ins.disk.files[0]).size) throw new CliError(`--at ${at}: past the end of ${image}`)
      const r = await whatIsAt(ins, at)
      if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n')
      else {
        const parts = [`${r.offset}: ${r.class}${r.structure ? ` (${r.structure})` : ''}`]
        if (r.guestOffset !== undefined) parts.push(`guest offset ${r.guestOffset}`)
        if (r.volume !== undefined) parts.push(`volume ${r.volume}`)
        if (r.fsBlock !== undefined) parts.push(`fs block ${r.fsBlock}`)
        if (r.inode !== undefined) parts.push(`inode ${r.inode}`)
        if (r.logical !== undefined) parts.push(`file block ${r.logical}`)
        if (r.path !== undefined) parts.push(`path ${r.path}`)
        process.stdout.write(parts.join(', ') + '\n')
      }
      return
    }
    if (o.map) {
      const files = (ins.fileMaps ?? []).map((m) => ({
        path: m.path,
        size: m.size,
        extents: [...m.map.runs()].map(([s, c, k]) => {
          // 4 KiB blocks to bytes, clipped to the file (its last block may be partial).
          const off = s * 4096
          return [off, Math.min((s + c) * 4096, Math.max(m.size, off)) - off, className(k)] as [number, number, string]
        }),
      }))
      if (o.json) process.stdout.write(JSON.stringify({ files }) + '\n')
      else {
        for (const f of files) {
          process.stdout.write(`${f.path} (${f.size} bytes)\n`)
          for (const [off, len, cls] of f.extents) process.stdout.write(`  ${String(off).padStart(14)} ${String(len).padStart(12)}  ${cls}\n`)
        }
      }
      return
    }
    if (o.json) process.stdout.write(JSON.stringify(ins.report, null, 2) + '\n')
    else process.stdout.write(formatReport(ins.report))
  } finally {
    await ins.close()
  }
}

function table(rows: string[][]): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  return rows.map((r) => '  ' + r.map((c, i) => c.padEnd(w[i])).join('  ').trimEnd()).join('\n') + '\n'
}

export function formatReport(r: InspectReport): string {
  let s = ''
  s += `image         ${r.image}\n`
  s += `format        ${r.format} ${r.subformat}${r.readOnly ? ` (read-only: ${r.readOnly})` : ''}\n`
  s += `virtual size  ${formatSize(r.virtualSize)} (${r.virtualSize} bytes)\n`
  s += `allocated     ${formatSize(r.allocatedBytes)}\n`
  s += `files         ${r.files.join('\n              ')}\n`
  if (r.parents.length) s += `parents       ${r.parents.map((p) => `${p.path} (${p.format} ${p.subformat})`).join('\n              ')}\n`
  const metaBytes = r.regions.reduce((a, x) => a + x.length, 0)
  s += `container meta-data  ${r.regions.length} regions, ${formatSize(metaBytes)}\n`
  const shown = r.regions.slice(0, 12)
  if (shown.length) {
    s += table([
      ['structure', 'file', 'offset', 'length'],
      ...shown.map((x) => [x.structure, x.file === r.files[0] ? '.' : x.file, String(x.offset), String(x.length)]),
    ])
    if (r.regions.length > shown.length) s += `  ... ${r.regions.length - shown.length} more (--json lists all)\n`
  }
  s += `volumes       ${r.scheme === 'none' ? 'no partition table' : r.scheme}\n`
  if (r.partitions.length) {
    s += table([
      ['#', 'scheme', 'start', 'size', 'type', 'name', 'content'],
      ...r.partitions.map((p) => [String(p.index), p.scheme, String(p.start), formatSize(p.size), p.type, p.name || '-', p.content]),
    ])
  }
  for (const w of r.warnings) s += `warning: ${w}\n`
  for (const f of r.filesystems) {
    s += `file system on volume ${f.volume}: ${f.type}, ${f.blockSize}-byte blocks, ${f.blocks} blocks${f.label ? `, label "${f.label}"` : ''}\n`
    s += `  features: ${f.features.join(' ')}\n`
    const rows = Object.entries(f.classes)
      .filter(([, v]) => v.blocks > 0)
      .map(([k, v]) => [k, String(v.blocks), formatSize(v.bytes)])
    s += table([['class', 'blocks', 'bytes'], ...rows])
    s += `  scan ${f.scanMs.toFixed(0)} ms, ${formatSize(f.bytesRead)} read in ${f.reads} reads, map ${formatSize(f.mapBytes)}`
    s += f.skipped.count ? `, ${f.skipped.count} corrupt structures skipped (${f.skipped.reasons.slice(0, 3).join('; ')})\n` : '\n'
  }
  for (const e of r.errors) s += `volume ${e.volume}: not scanned: ${e.message}\n`
  if (r.fileMapBytes !== undefined) s += `per-file map  ${formatSize(r.fileMapBytes)} of RAM\n`
  return s
}
