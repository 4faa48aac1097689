// Every container format, registered with the probe chain of open.ts.
import { registerContainer } from './open'
import { rawFormat } from './raw'

registerContainer(rawFormat)

export { openImage, MAX_CHAIN } from './open'
export type { ContainerFormat, ContainerRegion, FileLocation, GuestMapping, GuestRange, VirtualDisk } from './types'
