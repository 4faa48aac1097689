// RAM hits the binding answered on the libfuse threads (the native RAM index,
// native/fuse/ram_index.h): their keys come back through a ring that this
// drains every NATIVE_DRAIN_MS (and before stats), counting each as a RAM hit
// of its image and class and as LRU use, as if JavaScript had served it.

import { splitKey } from '../native/constants'
import type { RamCache } from '../store/ram'
import type { ImageEntry } from './image'

/** How often the blocks the binding served from RAM are counted and touched in the LRU. */
const NATIVE_DRAIN_MS = 25

export class RamDrain {
  private readonly drained = new Float64Array(8192)
  private readonly timer: NodeJS.Timeout

  constructor(
    private readonly ram: RamCache,
    private readonly drain: (out: Float64Array) => number,
    private readonly lookup: (image: number) => ImageEntry | undefined,
  ) {
    this.timer = setInterval(() => this.run(), NATIVE_DRAIN_MS)
    this.timer.unref()
  }

  /** Counts what the ring holds now. */
  run(): void {
    const now = Date.now()
    for (;;) {
      const n = this.drain(this.drained)
      if (n === 0) return
      for (let i = 0; i < n; i++) {
        const key = this.drained[i]
        const { image, block } = splitKey(key)
        this.lookup(image)?.router.servedFromRam(block, now)
        this.ram.touch(key)
      }
      if (n < this.drained.length) return
    }
  }

  /** The last count; no more after it. */
  stop(): void {
    clearInterval(this.timer)
    this.run()
  }
}
