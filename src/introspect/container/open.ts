// Opening an image: decide the container format by content (never by name),
// keep every extent and parent file inside the store, bound parent chains.

import fs from 'fs'
import path from 'path'
import { CorruptError, IntrospectIOError, NotThisFormatError } from '../errors'
import { FileReader } from '../reader'
import type { DiskFile } from './disk'
import type { VirtualDisk } from './types'

/** Longest backing chain we follow (qemu's own limit is in this range too). */
export const MAX_CHAIN = 32

export interface OpenOptions {
  /** Directory every extent and parent file must resolve inside (realpath). Default: the image's own directory. */
  storeRoot?: string
  /**
   * Opens a file of the image (the image itself, extents, parents) for reading.
   * Default: the file on disk. The mount passes its own router for images it
   * serves, so parsers see the current bytes (redirected writes included).
   */
  openFile?: (p: string) => Promise<DiskFile>
}

const openPlain = (p: string): Promise<DiskFile> => FileReader.open(p)

export interface OpenContext {
  readonly storeRoot: string
  /** Real paths of the images already on this chain (cycle detection). */
  readonly chain: readonly string[]
  openFile(p: string): Promise<DiskFile>
  /**
   * The file another file of the image names (`candidates`: as written in
   * the image, best first), resolved against the naming file's directory.
   * Throws when none exists inside the store, or when one resolves outside it.
   */
  resolveRelated(from: string, candidates: string[], what: string, structure: string, offset?: number): string
  /** Opens a parent image found with resolveRelated. */
  openParent(p: string): Promise<VirtualDisk>
}

export interface ContainerModule {
  readonly format: string
  /** `head`: the first up to 64 KiB of the file. May read more (a footer) through `file`. */
  probe(head: Buffer, file: DiskFile): Promise<boolean>
  open(file: DiskFile, ctx: OpenContext): Promise<VirtualDisk>
}

function isInside(root: string, p: string): boolean {
  const rel = path.relative(root, p)
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))
}

function makeContext(storeRoot: string, chain: string[], modules: readonly ContainerModule[], openFile: (p: string) => Promise<DiskFile>): OpenContext {
  return {
    storeRoot,
    chain,
    openFile,
    resolveRelated(from, candidates, what, structure, offset) {
      const base = path.dirname(from)
      let outside: string | undefined
      let notFile: { name: string; real: string; kind: string } | undefined
      for (const name of candidates) {
        if (!name || name.includes('\0')) continue
        const abs = path.resolve(base, name)
        let real: string
        try {
          real = fs.realpathSync(abs)
        } catch {
          if (!isInside(storeRoot, abs)) outside ??= abs
          continue
        }
        if (!isInside(storeRoot, real)) {
          outside ??= real
          continue
        }
        const st = fs.statSync(real)
        if (!st.isFile()) {
          notFile ??= { name, real, kind: st.isDirectory() ? 'a directory' : 'not a regular file' }
          continue
        }
        return real
      }
      if (outside !== undefined) {
        throw new CorruptError(`${what} "${outside}" is outside the store ${storeRoot}; only files inside the store are opened`, {
          file: from,
          structure,
          offset,
        })
      }
      if (notFile !== undefined) {
        throw new CorruptError(`${what} "${notFile.name}" names ${notFile.real}, which is ${notFile.kind}, not an image file`, { file: from, structure, offset })
      }
      throw new IntrospectIOError(`${what} "${candidates.find((c) => c) ?? ''}" does not exist (looked in ${base})`, {
        file: from,
        structure,
        offset,
      })
    },
    async openParent(p) {
      if (chain.includes(p)) throw new CorruptError(`backing chain loops back to ${p}`, { file: chain[chain.length - 1], structure: 'parent' })
      if (chain.length >= MAX_CHAIN) {
        throw new CorruptError(`backing chain is deeper than ${MAX_CHAIN} images`, { file: chain[chain.length - 1], structure: 'parent' })
      }
      return openWith(p, storeRoot, [...chain, p], modules, true, openFile)
    },
  }
}

async function openWith(
  p: string,
  storeRoot: string,
  chain: string[],
  modules: readonly ContainerModule[],
  asParent: boolean,
  openFile: (p: string) => Promise<DiskFile>,
): Promise<VirtualDisk> {
  const file = await openFile(p)
  try {
    const head = await file.read(0, Math.min(file.size, 65536))
    for (const m of modules) {
      if (await m.probe(head, file)) return await m.open(file, makeContext(storeRoot, chain, modules, openFile))
    }
    throw new NotThisFormatError(asParent ? 'the parent image is not a disk image' : 'not a disk image: no container header, partition table or file system found', {
      file: p,
    })
  } catch (e) {
    await file.close().catch(() => undefined)
    throw e
  }
}

/** Registered container modules, most specific magic first; raw (which accepts any partition table or file system) last. */
const registry: ContainerModule[] = []

export function registerContainer(m: ContainerModule): void {
  if (!registry.some((x) => x.format === m.format)) registry.push(m)
  registry.sort((a, b) => Number(a.format === 'raw') - Number(b.format === 'raw'))
}

export async function openImage(p: string, opts: OpenOptions = {}): Promise<VirtualDisk> {
  const real = fs.realpathSync(p)
  const root = fs.realpathSync(opts.storeRoot ?? path.dirname(real))
  if (!isInside(root, real)) throw new CorruptError(`image is outside the store ${root}`, { file: real })
  return openWith(real, root, [real], registry, false, opts.openFile ?? openPlain)
}

/**
 * Whether a file is a disk image by content (the probe chain only, no tables
 * read): the format name, or null. I/O errors are thrown.
 */
export async function probeImage(p: string): Promise<string | null> {
  const file = await FileReader.open(p)
  try {
    const head = await file.read(0, Math.min(file.size, 65536))
    for (const m of registry) if (await m.probe(head, file)) return m.format
    return null
  } finally {
    await file.close().catch(() => undefined)
  }
}

/** Headers of the containers that can be smaller than the disk they hold (a raw image never is). */
function looksLikeSparseContainer(head: Buffer): boolean {
  const ascii = (at: number, s: string) => head.toString('latin1', at, at + s.length) === s
  return (
    ascii(0, 'QFI\xfb') || // qcow2
    ascii(0, 'KDMV') || // VMDK sparse extent
    ascii(0, 'COWD') || // VMDK COWD
    ascii(0, '# Disk DescriptorFile') || // VMDK text descriptor
    ascii(0, 'conectix') || // VHD dynamic or differencing (footer copy at 0)
    (head.length >= 0x44 && head.readUInt32LE(0x40) === 0xbeda107f) // VDI
  )
}

/**
 * Whether a file too small to be a raw disk image is a container whose virtual
 * disk is at least `minVirtual` bytes (a fresh `qemu-img create -f qcow2 vm.qcow2
 * 1G` is about 200 KiB on disk): its format, or null. Cheap for the files that
 * are not: one read of 512 bytes.
 */
export async function probeSmallContainer(p: string, minVirtual: number, storeRoot?: string): Promise<string | null> {
  const file = await FileReader.open(p)
  let head: Buffer
  try {
    if (file.size < 512) return null
    head = await file.read(0, 512)
  } finally {
    await file.close().catch(() => undefined)
  }
  if (!looksLikeSparseContainer(head)) return null
  const format = await probeImage(p)
  if (!format || format === 'raw') return null
  const disk = await openImage(p, { storeRoot })
  try {
    return disk.size >= minVirtual ? format : null
  } finally {
    await disk.close().catch(() => undefined)
  }
}
