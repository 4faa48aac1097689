// Folding classified guest ranges into one map per backing file (DESIGN.md,
// pipeline step 4): at 4 KiB granularity of that file, a block is meta-data
// when any byte of it is. Guest ranges follow the virtual disk down its
// parent chain to the file that stores them; container regions of every layer
// are classified `container` in their own file.

import { BlockClass } from '../classes'
import type { VirtualDisk } from '../container/types'
import { ExtentMap, type Run } from './extent-map'

/** The granularity of the per-file maps: one page, what the datapath routes. */
export const FILE_BLOCK = 4096

export interface GuestClassRun {
  offset: number
  length: number
  cls: BlockClass
}

export interface FileMap {
  path: string
  /** Size of the file in bytes when the map was made. */
  size: number
  map: ExtentMap
}

/** Every layer of the chain, top first, with its files. */
function layers(disk: VirtualDisk): VirtualDisk[] {
  const out: VirtualDisk[] = []
  for (let d: VirtualDisk | null = disk; d; d = d.parent) out.push(d)
  return out
}

export class FileMapBuilder {
  private readonly runs = new Map<string, Run[]>()
  private readonly sizes = new Map<string, number>()

  constructor(private readonly disk: VirtualDisk, fileSizes: (path: string) => number) {
    for (const layer of layers(disk)) {
      for (const f of layer.files) {
        if (!this.runs.has(f)) {
          this.runs.set(f, [])
          this.sizes.set(f, fileSizes(f))
        }
      }
      for (const r of layer.regions()) this.addFileBytes(layer.files[r.file], r.offset, r.length, BlockClass.Container)
    }
  }

  private addFileBytes(path: string, offset: number, length: number, cls: BlockClass): void {
    if (length <= 0) return
    const first = Math.floor(offset / FILE_BLOCK)
    const last = Math.floor((offset + length - 1) / FILE_BLOCK)
    ;(this.runs.get(path) as Run[]).push([first, last - first + 1, cls])
  }

  /**
   * Classifies guest bytes [offset, offset + length) of the top disk. Stretches
   * a layer leaves to its parent are followed with an explicit stack (the
   * chain depth is bounded when the disk is opened).
   */
  addGuest(offset: number, length: number, cls: BlockClass): void {
    const stack: [VirtualDisk, number, number][] = [[this.disk, offset, Math.min(offset + length, this.disk.size)]]
    while (stack.length) {
      const [layer, start, end] = stack.pop() as [VirtualDisk, number, number]
      let pos = start
      while (pos < end) {
        const m = layer.mapGuest(pos)
        const n = Math.min(m.length, end - pos)
        if (m.kind === 'data') this.addFileBytes(layer.files[m.file], m.fileOffset, n, cls)
        else if (m.kind === 'compressed') this.addFileBytes(layer.files[m.file], m.fileOffset, m.storedLength, cls)
        else if (m.kind === 'parent' && layer.parent && pos < layer.parent.size) {
          stack.push([layer.parent, pos, Math.min(pos + n, layer.parent.size)])
        }
        pos += n
      }
    }
  }

  build(): FileMap[] {
    const out: FileMap[] = []
    for (const [path, runs] of this.runs) {
      out.push({ path, size: this.sizes.get(path) ?? 0, map: ExtentMap.fromRuns(runs) })
    }
    return out
  }
}
