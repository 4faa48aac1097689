/*
 * vmdi_constants.h: the numbers the C of the binding (native/fuse/, compiled into
 * fuse-native's addon) and the TypeScript (src/native/constants.ts) must agree on.
 * Neither side may use a literal for these. The addon exports the values it was
 * compiled with (`vmdi_constants`), and test/native/constants.test.ts checks them
 * against src/native/constants.ts and against this header's text.
 *
 * No locking, no code: plain macros, included by every file of native/fuse/ and by
 * the fuse-native patch.
 */
#ifndef VMDI_CONSTANTS_H
#define VMDI_CONSTANTS_H

/* The block of every cache tier and of the image map: 4 KiB, byte offset >> 12. */
#define VMDI_BLOCK_SHIFT 12
#define VMDI_BLOCK_SIZE (1 << VMDI_BLOCK_SHIFT)

/*
 * A cached block's key: image id * 2^32 + block number (image << 32 | block).
 * JavaScript holds keys as doubles, so they must stay below 2^53: image ids are
 * below 2^20 (and blocks below 2^32: a 16 TiB image).
 */
#define VMDI_KEY_IMAGE_SHIFT 32
#define VMDI_IMAGE_ID_LIMIT (1 << 20)

/* The RAM tier's slabs: 4096 blocks (16 MiB) per JavaScript Buffer; slot n lives
 * in slab n / VMDI_SLAB_BLOCKS at block n % VMDI_SLAB_BLOCKS. */
#define VMDI_SLAB_BLOCKS 4096

/* The ring of keys of blocks the binding served from RAM, drained by JavaScript;
 * keys that find it full are lost (counted). A power of two. */
#define VMDI_RAM_RING_SLOTS (1 << 18)

/* File handles below this are served on the libfuse thread (direct path and RAM
 * index); JavaScript reuses released handles so they stay below it. */
#define VMDI_FH_LIMIT 65536

/* Open reply flags JavaScript returns from open/create (the third callback argument). */
#define VMDI_OPEN_DIRECT_IO 1
#define VMDI_OPEN_KEEP_CACHE 2

/* The native data path's state of a 4 KiB block of an image (2 bits a block in
 * native/fuse/block_state.c's table, kept current by JavaScript): NONE, JavaScript
 * serves it (meta-data, dirty copies, unknown); READ, reads may be served with pread
 * on the image's HDD fd, writes go to JavaScript; RW, reads and writes with
 * pread/pwrite. */
#define VMDI_NATIVE_NONE 0
#define VMDI_NATIVE_READ 1
#define VMDI_NATIVE_RW 2

#endif
