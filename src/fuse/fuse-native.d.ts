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
    _fuseOptions(): string
    static unmount(mnt: string, cb: (err: Error | null) => void): void
  }
  export = Fuse
}
