// The virtual disk every container format produces (DESIGN.md, introspection
// pipeline step 1): guest byte offset → (backing file, file offset) or
// unallocated, the way back, and the container's own meta-data regions.

import type { Reader } from '../reader'

export type ContainerFormat = 'raw' | 'vmdk' | 'vhd' | 'vdi' | 'qcow2'

/** A byte range of one of the disk's files holding container meta-data. */
export interface ContainerRegion {
  /** Index into VirtualDisk.files. */
  file: number
  offset: number
  length: number
  /** 'vmdk header', 'grain directory', 'redundant grain table', 'qcow2 L2 table', 'VHD BAT', ... */
  structure: string
}

/** What lives at a guest offset, valid for `length` bytes from it. */
export type GuestMapping =
  /** Stored uncompressed in files[file] at fileOffset. */
  | { kind: 'data'; length: number; file: number; fileOffset: number }
  /** Reads as zeros (unallocated without a parent, or an explicit zero cluster). */
  | { kind: 'zero'; length: number }
  /** Unallocated here: the parent image supplies the bytes at the same guest offset. */
  | { kind: 'parent'; length: number }
  /** Inside a compressed grain/cluster stored at fileOffset (storedLength bytes): readable, never written in place. */
  | { kind: 'compressed'; length: number; file: number; fileOffset: number; storedLength: number; grainOffset: number }

/** What a byte of one of the disk's files is, valid for `length` bytes from it. */
export type FileLocation =
  | { kind: 'guest'; guestOffset: number; length: number }
  /** Stored bytes of a compressed grain (`length` of them left from here): they inflate to guest bytes [guestOffset, guestOffset + guestLength). */
  | { kind: 'compressed'; guestOffset: number; length: number; guestLength: number }
  | { kind: 'container'; structure: string; length: number }
  | { kind: 'unused'; length: number }

/** A guest byte range whose mapping changed after a container meta-data write. */
export interface GuestRange {
  offset: number
  length: number
}

export interface VirtualDisk extends Reader {
  readonly format: ContainerFormat
  /** 'monolithicSparse', 'dynamic', 'v3', 'flat', ... */
  readonly subformat: string
  /** Virtual size in bytes (Reader.size). */
  readonly size: number
  /** Absolute paths of this layer's files; [0] is the image file itself. Parents are separate disks. */
  readonly files: readonly string[]
  readonly parent: VirtualDisk | null
  /** Set when the guest must not write through the map (compressed, streamOptimized): the reason. */
  readonly readOnlyReason: string | null
  /** Container meta-data regions of this layer's files, sorted by (file, offset). */
  regions(): readonly ContainerRegion[]
  /** Guest bytes this layer stores (data and compressed). */
  allocatedBytes(): number
  /** RAM the mapping tables take, in bytes. */
  mapBytes(): number
  mapGuest(guestOffset: number): GuestMapping
  locate(file: number, fileOffset: number): FileLocation
  /**
   * The guest (or anyone) wrote `bytes` at `fileOffset` of files[file]. When
   * that range holds container meta-data (a grain-table / L2 / BAT / block-map
   * entry), re-read the affected entries from `bytes` and return the guest
   * ranges whose mapping changed; otherwise []. May read the file (a new L1
   * entry names an L2 table written before it).
   */
  applyWrite(file: number, fileOffset: number, bytes: Buffer): Promise<GuestRange[]>
  /** Bytes read from the files while opening (headers and tables), this layer and its parents. */
  openBytesRead(): number
  close(): Promise<void>
}
