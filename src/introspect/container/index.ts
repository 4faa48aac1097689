// Every container format, registered with the probe chain of open.ts.
import { registerContainer } from './open'
import { qcow2Format } from './qcow2'
import { rawFormat } from './raw'
import { vdiFormat } from './vdi'
import { vhdFormat } from './vhd'
import { vmdkFormat } from './vmdk'

registerContainer(qcow2Format)
registerContainer(vmdkFormat)
registerContainer(vdiFormat)
registerContainer(vhdFormat)
registerContainer(rawFormat)

export { openImage, probeImage, probeSmallContainer, MAX_CHAIN } from './open'
export type { ContainerFormat, ContainerRegion, FileLocation, GuestMapping, GuestRange, VirtualDisk } from './types'
