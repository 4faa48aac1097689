// Types for fuse-native 2.2.6 as patched by patches/fuse-native+2.2.6.patch.
declare module 'fuse-native' {
  type Cb = (...args: any[]) => void
  interface FuseOpts {
    allowOther?: boolean
    defaultPermissions?: boolean
    fsname?: string
    subtype?: string
    debug?: boolean
    timeout?: number | false
    extraOptions?: string[]
    noforget?: boolean
    attrTimeout?: number
    entryTimeout?: number
    onExit?: () => void
  }
  class Fuse {
    constructor(mnt: string, ops: Record<string, Cb>, opts?: FuseOpts)
    mount(cb: (err: Error | null) => void): void
    unmount(cb: (err: Error | null) => void): void
    getContext(): { uid: number; gid: number; pid: number } | null
    threadStats(): { created: number; parked: number }
    setDirect(fh: number, fd: number): boolean
    directSlow(ms: number): { fh: number; op: 'read' | 'write'; started: number }[]
    directStats(): { reads: number; writes: number; readBytes: number; writeBytes: number; parallelWriteOpens: number; writesTogetherMax: number }
    ramInit(capacity: number): boolean
    ramSlab(index: number, slab: Buffer): boolean
    ramStore(slot: number, key: number, src: Buffer, at: number, servable: boolean): boolean
    ramDrop(slot: number): boolean
    ramDrain(out: Float64Array): number
    ramFh(fh: number, image: number | null, fd: number): boolean
    ramStats(): { hits: number; requests: number; fallbacks: number; lost: number }
    /** The native data path of an image (native/fuse/block_state.h): a table of block
     * states (NATIVE_NONE/READ/RW, src/native/constants.ts) over its HDD file `fd`,
     * which must stay open until dataRetire returns. Needs no mount; null when memory
     * is short. A table is never freed (dataRetire frees all but a few KiB). */
    dataNew(image: number, fd: number): Fuse.NativeDataTable | null
    /** Blocks [start, start + count) become `state`, once the native I/O in flight on
     * them has finished. false: refused (bad state, past 2^32 blocks, retired) or
     * memory short (the table then sends everything to JavaScript). */
    dataSet(table: Fuse.NativeDataTable, start: number, count: number, state: number): boolean
    /** Blocks of the range become min(their state, max); as dataSet. */
    dataClamp(table: Fuse.NativeDataTable, start: number, count: number, max: number): boolean
    dataGet(table: Fuse.NativeDataTable, block: number): number
    /** The file's size as JavaScript knows it: a native write must end at or before it. */
    dataSize(table: Fuse.NativeDataTable, bytes: number): void
    /** on: every write goes to JavaScript (a scan is running); returns once the native writes in flight have finished. */
    dataWritesToJs(table: Fuse.NativeDataTable, on: boolean): void
    dataReadsToJs(table: Fuse.NativeDataTable, on: boolean): void
    /** Serve handle fh with the table (its direct_io opens then get parallel writes), or stop (null). false: fh too large or not mounted. */
    dataFh(fh: number, table: Fuse.NativeDataTable | null): boolean
    dataStats(table: Fuse.NativeDataTable): { reads: number; writes: number; readBytes: number; writeBytes: number; lastReadMs: number; lastWriteMs: number; passed: number; tableBytes: number }
    /** Returns once no native I/O runs on the table; it serves nothing natively from then on. */
    dataRetire(table: Fuse.NativeDataTable): void
    _fuseOptions(): string
    static unmount(mnt: string, cb: (err: Error | null) => void): void
  }
  namespace Fuse {
    /** A native data table (dataNew): opaque, an External of the addon. */
    export type NativeDataTable = object
  }
  export = Fuse
}
