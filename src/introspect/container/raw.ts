// A raw disk: the file is the guest disk, byte for byte. Accepted only when
// the bytes show a partition table or a file system at offset 0 (by content:
// a file named .img holding anything else is not a disk image).

import { MappedDisk, type DiskFile } from './disk'
import { RunKind } from './guest-table'
import type { ContainerModule } from './open'

/** Magic numbers of what a disk starts with: partition tables, volume headers, file systems. */
export function looksLikeDisk(head: Buffer): boolean {
  const at = (o: number, s: string) => head.length >= o + s.length && head.toString('latin1', o, o + s.length) === s
  if (head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa) return true // MBR, protective MBR, FAT/NTFS boot sector
  if (at(512, 'EFI PART') || at(4096, 'EFI PART')) return true
  if (head.length >= 1082 && head.readUInt16LE(1080) === 0xef53) return true // ext2/3/4
  if (at(0, 'XFSB')) return true
  for (let s = 0; s < 4; s++) if (at(s * 512, 'LABELONE')) return true // LVM2 PV on the whole disk
  if (at(4086, 'SWAPSPACE2') || at(4086, 'SWAP-SPACE')) return true
  return false
}

export class RawDisk extends MappedDisk {
  constructor(file: DiskFile, subformat = 'flat') {
    super({ format: 'raw', subformat, size: file.size, files: [file] })
    this.table.add(0, file.size, 0, 0, RunKind.Data)
    this.table.finish()
    this.setRegions([])
  }
}

export const rawFormat: ContainerModule = {
  format: 'raw',
  probe: async (head) => looksLikeDisk(head),
  open: async (file) => new RawDisk(file),
}
