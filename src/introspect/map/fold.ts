// Folding classified guest ranges into one map per backing file (DESIGN.md,
// pipeline step 4): at 4 KiB granularity of that file, a block is meta-data
// when any byte of it is, and bytes of several classes share it by the one
// rule of classes.ts (sharedBlockClass). Guest ranges follow the virtual disk
// down its parent chain to the file that stores them (geometry.ts); container
// regions of every layer are classified `container` in their own file.

import { BlockClass, sharedBlockRank } from '../classes'
import type { VirtualDisk } from '../container/types'
import { ExtentMap, type Run } from './extent-map'
import { guestToFiles, layersOf } from './geometry'

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

export class FileMapBuilder {
  private readonly runs = new Map<string, Run[]>()
  private readonly sizes = new Map<string, number>()

  constructor(private readonly disk: VirtualDisk, fileSizes: (path: string) => number) {
    for (const layer of layersOf(disk)) {
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

  /** Classifies guest bytes [offset, offset + length) of the top disk, in every file that stores them (geometry.guestToFiles). */
  addGuest(offset: number, length: number, cls: BlockClass): void {
    for (const p of guestToFiles(this.disk, offset, length)) this.addFileBytes(p.layer.files[p.file], p.fileOffset, p.fileLength, cls)
  }

  build(): FileMap[] {
    const out: FileMap[] = []
    for (const [path, runs] of this.runs) {
      out.push({ path, size: this.sizes.get(path) ?? 0, map: ExtentMap.fromRuns(runs, sharedBlockRank) })
    }
    return out
  }
}
