// The numbers the binding's C (native/vmdi_constants.h, compiled into fuse-native's
// addon) and the TypeScript must agree on, mirrored one for one under the same
// names without the VMDI_ prefix. test/native/constants.test.ts checks them against
// the addon's `vmdi_constants` (what was built) and against the header's text.

/** log2 of the block of every cache tier and of the image map. */
export const BLOCK_SHIFT = 12
/** The block: 4 KiB. */
export const BLOCK_SIZE = 1 << BLOCK_SHIFT

/** A cached block's key is image id * 2^KEY_IMAGE_SHIFT + block number (see blockKey). */
export const KEY_IMAGE_SHIFT = 32
/** Image ids are below this, so keys stay below 2^53 (exact as numbers). */
export const IMAGE_ID_LIMIT = 1 << 20

/** Blocks per RAM slab Buffer (16 MiB). */
export const SLAB_BLOCKS = 4096

/** Keys of blocks the binding served from RAM that its ring holds until drained. */
export const RAM_RING_SLOTS = 1 << 18

/** File handles below this are served on the libfuse thread (direct path, RAM index). */
export const FH_LIMIT = 65536

/** Open reply flags (the third argument of open's and create's callback). */
export const OPEN_DIRECT_IO = 1
export const OPEN_KEEP_CACHE = 2

/** A 4 KiB block's state in the native data path's table (native/fuse/block_state.h):
 * JavaScript serves it; reads may be served natively (writes go to JavaScript);
 * reads and writes natively. */
export const NATIVE_NONE = 0
export const NATIVE_READ = 1
export const NATIVE_RW = 2

/** The key of `block` of image `image`. */
export function blockKey(image: number, block: number): number {
  return image * 2 ** KEY_IMAGE_SHIFT + block
}

/** The image and block of a key (blockKey's inverse). */
export function splitKey(key: number): { image: number; block: number } {
  const image = Math.floor(key / 2 ** KEY_IMAGE_SHIFT)
  return { image, block: key - image * 2 ** KEY_IMAGE_SHIFT }
}
