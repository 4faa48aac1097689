/*
 * ram_index.h: the native index of the RAM tier, so that a read of an introspected
 * image whose blocks are all in RAM is answered on the libfuse thread with memcpy,
 * with no JavaScript round trip.
 *
 * Who owns what: src/store/ram.ts owns the policy (which block sits in which slot,
 * eviction, priorities) and the memory (slab Buffers of VMDI_SLAB_BLOCKS blocks).
 * This index only learns, through vmdi_ram_store / vmdi_ram_drop, which slot holds
 * which key and whether it may be served here. Keys: image id << 32 | block
 * (VMDI_KEY_IMAGE_SHIFT).
 *
 * Locking: one mutex per index. Every change of a slot's bytes (vmdi_ram_store
 * copies them in) or of its key happens under it, and vmdi_ram_read holds it from
 * the first lookup to the last memcpy, so a reader never sees a torn or stale block.
 * The hit, request and fallback counters and the ring are changed under it too
 * (one fallback count, for the file-size check, is an atomic add outside it).
 *
 * Callers: vmdi_ram_read from the libfuse worker threads (native/fuse/vmdi_fuse.c,
 * the read hook); everything else from the Node main thread through the addon's
 * fuse_native_ram_* functions (native/fuse/vmdi_fuse.c). No libfuse or N-API in
 * here: native/test/ram_index_test.c runs it alone.
 */
#ifndef VMDI_RAM_INDEX_H
#define VMDI_RAM_INDEX_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vmdi_constants.h"

/* The most blocks one read may span and still be answered here. */
#define VMDI_RAM_MAX_SPAN 64

typedef struct {
  pthread_mutex_t mut;
  uint32_t capacity;    /* slots (4 KiB blocks) */
  uint32_t mask;        /* table size - 1; the table has >= 2 * capacity entries */
  uint32_t *table;      /* open addressing, linear probing: slot + 1, 0 = empty */
  uint64_t *slot_key;   /* per slot: key + 1 when indexed, 0 = not indexed */
  char **slabs;         /* slab index -> the Buffer's memory (JavaScript keeps it alive) */
  uint32_t nslabs;
  uint64_t *ring;       /* keys served, VMDI_RAM_RING_SLOTS of them */
  uint64_t ring_mask;
  uint64_t ring_head;   /* next write; ring_head - ring_tail entries are waiting */
  uint64_t ring_tail;   /* next drain */
  uint64_t ring_lost;   /* keys served while the ring was full */
  uint64_t hits;        /* blocks served */
  uint64_t requests;    /* reads answered */
  uint64_t fallbacks;   /* reads of an image handle sent to JavaScript */
} vmdi_ram_t;

/* A new, empty index of `capacity` slots; NULL when capacity is 0 or memory is short. */
vmdi_ram_t *vmdi_ram_new (uint32_t capacity);
/* Frees an index nobody uses any more (the binding never does: it lives with the process). */
void vmdi_ram_free (vmdi_ram_t *r);

/* Slab `index` is `slab` (VMDI_SLAB_BLOCKS blocks, fewer for the last). 1, or 0 if out of range. */
int vmdi_ram_slab (vmdi_ram_t *r, uint32_t index, char *slab);

/*
 * The slot's bytes become src[at .. at + VMDI_BLOCK_SIZE); it is indexed under key
 * when servable (a slot already indexed under key loses it), else not at all.
 * 0 when the slot is out of range, its slab unknown or src too short; the slot is
 * then not indexed (its old key is gone whenever the slot was in range).
 */
int vmdi_ram_store (vmdi_ram_t *r, uint32_t slot, uint64_t key, const char *src, size_t src_len, uint32_t at, int servable);

/* The slot is no longer indexed. 0 when it is out of range. */
int vmdi_ram_drop (vmdi_ram_t *r, uint32_t slot);

/* The slot indexed under key, or -1 (tests and diagnostics). */
int64_t vmdi_ram_slot_of (vmdi_ram_t *r, uint64_t key);

/*
 * Answers a read of `len` bytes at `offset` of image `image` (its id, not id + 1)
 * whose HDD file is `fd`, when the read ends inside the file (fstat), spans at most
 * VMDI_RAM_MAX_SPAN blocks and every block is indexed: copies into buf, logs each
 * block's key in the ring, returns len. Else -1 (the caller sends it to JavaScript).
 */
int vmdi_ram_read (vmdi_ram_t *r, uint32_t image, int fd, char *buf, size_t len, off_t offset);

/* Moves up to `length` keys from the ring into out (as doubles); returns how many. */
uint32_t vmdi_ram_drain (vmdi_ram_t *r, double *out, size_t length);

/* out: blocks served, reads answered, reads sent to JavaScript, ring entries lost. */
void vmdi_ram_stats (vmdi_ram_t *r, uint64_t out[4]);

#endif
