// Guest bytes of a virtual disk ↔ bytes of the files that store them, for a
// chain of layers (an overlay over its bases). The one place this walk is
// written: the fold (guest → file, for every classified guest range) and the
// image map (file → guest, to recompute a file block's class and to find which
// file-system blocks a write lands in) both go through here. Volume bytes ↔
// disk (guest) bytes are volumeToDisk / diskToVolume in ../volume.
//
// Units: bytes throughout. "The top disk" is the one the guest sees; a layer
// is it or one of its parents; a file is an index into that layer's `files`.

import type { VirtualDisk } from '../container/types'

/** One file of one layer of a chain: what a per-file map is kept for. */
export interface FileRef {
  layer: VirtualDisk
  /** Index into layer.files ([0]: the layer's image file itself). */
  file: number
}

/** Guest bytes of the top disk and the file bytes that store them. */
export interface StoredPiece extends FileRef {
  guestOffset: number
  guestLength: number
  /** File bytes: uncompressed, the same length as the guest bytes, byte for byte; compressed, the grain's whole stored bytes. */
  fileOffset: number
  fileLength: number
  compressed: boolean
}

/** Every layer of the chain, top first. */
export function layersOf(disk: VirtualDisk): VirtualDisk[] {
  const out: VirtualDisk[] = []
  for (let d: VirtualDisk | null = disk; d; d = d.parent) out.push(d)
  return out
}

/**
 * Where guest bytes [offset, offset + length) of the top disk are stored:
 * stretches a layer leaves to its parent are followed down the chain with an
 * explicit stack (its depth is bounded when the disk is opened); zero
 * stretches store nothing and yield nothing. Pieces of one layer come in
 * guest order, a parent's after its child's.
 */
export function* guestToFiles(disk: VirtualDisk, offset: number, length: number): Generator<StoredPiece> {
  const stack: [VirtualDisk, number, number][] = [[disk, offset, Math.min(offset + length, disk.size)]]
  while (stack.length) {
    const [layer, start, end] = stack.pop() as [VirtualDisk, number, number]
    let pos = start
    while (pos < end) {
      const m = layer.mapGuest(pos)
      const n = Math.min(m.length, end - pos)
      if (m.kind === 'data') yield { layer, file: m.file, guestOffset: pos, guestLength: n, fileOffset: m.fileOffset, fileLength: n, compressed: false }
      else if (m.kind === 'compressed') yield { layer, file: m.file, guestOffset: pos, guestLength: n, fileOffset: m.fileOffset, fileLength: m.storedLength, compressed: true }
      else if (m.kind === 'parent' && layer.parent && pos < layer.parent.size) stack.push([layer.parent, pos, Math.min(pos + n, layer.parent.size)])
      pos += Math.max(1, n)
    }
  }
}

/**
 * The guest bytes of the top disk that bytes [offset, offset + length) of
 * `ref` hold, as the top disk sees them: a lower layer's bytes count only
 * where every layer above leaves the guest range to its parent (what an
 * overlay has written shadows its base). An uncompressed piece maps file
 * bytes to guest bytes one to one (fileOffset ↔ guestOffset); a compressed
 * one says that some stored bytes of a grain hold (the visible part of) the
 * guest range it inflates to. Container meta-data and unused file bytes
 * yield nothing.
 *
 * Compressed grains: qcow2 records a grain's stored length in whole sectors,
 * so the recorded ranges of neighbouring grains overlap, and locate() names
 * one grain per byte. On the 4 KiB blocks where they overlap, a grain the
 * fold counts (guestToFiles: every recorded range) can be missed here. Such
 * images are mapped read-only (VirtualDisk.readOnlyReason): no live update
 * asks.
 */
export function* fileToGuest(disk: VirtualDisk, ref: FileRef, offset: number, length: number): Generator<StoredPiece> {
  // The layers above ref's (top first); none for the top layer, the common case (no walk, no copy).
  const above: VirtualDisk[] = []
  let d: VirtualDisk | null = disk
  for (; d && d !== ref.layer; d = d.parent) above.push(d)
  if (!d) return
  for (let at = offset; at < offset + length; ) {
    const loc = ref.layer.locate(ref.file, at)
    const n = Math.max(1, Math.min(loc.length, offset + length - at))
    if (loc.kind === 'guest' && above.length === 0) {
      yield { layer: ref.layer, file: ref.file, guestOffset: loc.guestOffset, guestLength: n, fileOffset: at, fileLength: n, compressed: false }
    } else if (loc.kind === 'guest') {
      for (const [g, k] of visible(above, loc.guestOffset, n)) {
        yield { ...ref, guestOffset: g, guestLength: k, fileOffset: at + (g - loc.guestOffset), fileLength: k, compressed: false }
      }
    } else if (loc.kind === 'compressed') {
      for (const [g, k] of visible(above, loc.guestOffset, loc.guestLength)) {
        yield { ...ref, guestOffset: g, guestLength: k, fileOffset: at, fileLength: n, compressed: true }
      }
    }
    at += n
  }
}

/** The parts of guest range [g, g + n) that every layer of `above` (top first) leaves to its parent. */
function visible(above: VirtualDisk[], g: number, n: number): [number, number][] {
  let ranges: [number, number][] = [[g, g + n]]
  for (const layer of above) {
    const next: [number, number][] = []
    const limit = layer.parent ? Math.min(layer.size, layer.parent.size) : 0
    for (const [lo, hi0] of ranges) {
      const hi = Math.min(hi0, limit)
      for (let pos = lo; pos < hi; ) {
        const m = layer.mapGuest(pos)
        const k = Math.max(1, Math.min(m.length, hi - pos))
        if (m.kind === 'parent') {
          const last = next[next.length - 1]
          if (last && last[1] === pos) last[1] = pos + k
          else next.push([pos, pos + k])
        }
        pos += k
      }
    }
    ranges = next
  }
  return ranges.map(([lo, hi]) => [lo, hi - lo])
}
