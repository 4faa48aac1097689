/*
 * block_state.h: the native data path of an introspected image. JavaScript (the
 * datapath) keeps, per image, a table of 2-bit block states current
 * (VMDI_NATIVE_NONE / READ / RW, vmdi_constants.h); a libfuse worker thread serves
 * a read whose blocks are all READ or RW with pread on the image's HDD fd, and a
 * write whose blocks are all RW (and that does not grow the file) with pwrite, with
 * no JavaScript round trip. Everything else answers VMDI_DATA_PASS.
 *
 * Storage: blocks below 2^32 (16 TiB), in chunks of VMDI_DATA_CHUNK_BLOCKS blocks
 * (a 1 KiB bitmap) reached through a two-level directory: a top array of
 * VMDI_DATA_TOP entries, each NULL (all NONE), a sentinel (all READ, all RW) or a
 * second-level array of VMDI_DATA_SECOND chunk pointers, each again NULL, a
 * sentinel or a bitmap. A set or clamp over a whole chunk (or a whole second level)
 * stores a sentinel and frees what was below, so uniform runs cost nothing; a
 * bitmap is 0.25 byte a block, a second level 2 KiB for 4 GiB (at most 0.26 byte
 * a 4 KiB block in all).
 *
 * Locking (the point of it): a change of a block's state waits for the native I/O
 * in flight on that block. VMDI_DATA_STRIPES writer-preferring rwlocks; a block's
 * stripe is its chunk's, chunk % VMDI_DATA_STRIPES. Native reads and writes hold
 * the read locks of the stripes of their chunks (increasing order, at most
 * VMDI_DATA_MAX_STRIPES of them, else PASS) from the state check to the end of
 * pread/pwrite; set and clamp take one chunk's stripe write lock at a time (never
 * two). A second level is freed, and writes_to_js and retire return, only after
 * every stripe's write lock was taken and released once, so no I/O that started
 * before is still running. Directory pointers are published with release stores
 * and loaded with acquire loads; counters are relaxed atomics.
 *
 * Callers: vmdi_data_read/write from the libfuse worker threads (the read and write
 * hooks in vmdi_fuse.c); everything else from one thread at a time, the Node main
 * thread (the addon's fuse_native_data_* functions), which is the only writer: so
 * vmdi_data_get reads without a lock. No libfuse or N-API in here:
 * native/test/block_state_test.c runs it alone.
 */
#ifndef VMDI_BLOCK_STATE_H
#define VMDI_BLOCK_STATE_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vmdi_constants.h"

/* A chunk: 4096 blocks (16 MiB of the file), 2 bits a block = 1 KiB of bitmap. */
#define VMDI_DATA_CHUNK_SHIFT 12
#define VMDI_DATA_CHUNK_BLOCKS (1 << VMDI_DATA_CHUNK_SHIFT)
#define VMDI_DATA_CHUNK_BYTES (VMDI_DATA_CHUNK_BLOCKS / 4)
/* The directory: 4096 top entries (32 KiB, made with the table, freed by retire) of
 * 256 chunks (4 GiB of the file) each, a second level being 2 KiB: 2^20 chunks,
 * 2^32 blocks in all. */
#define VMDI_DATA_TOP_SHIFT 12
#define VMDI_DATA_TOP (1 << VMDI_DATA_TOP_SHIFT)
#define VMDI_DATA_SECOND_SHIFT 8
#define VMDI_DATA_SECOND (1 << VMDI_DATA_SECOND_SHIFT)
/* Blocks at or past this are not served here. */
#define VMDI_DATA_BLOCK_LIMIT ((uint64_t) 1 << 32)
#define VMDI_DATA_STRIPES 64
/* A request spanning more stripes than this goes to JavaScript. */
#define VMDI_DATA_MAX_STRIPES 4

/* Returned by read and write when JavaScript is to serve the request: never a byte
 * count or -errno (the same value as VMDI_FUSE_PASS). */
#define VMDI_DATA_PASS INT_MIN

typedef struct vmdi_data vmdi_data_t;

/* A table for image `image` whose HDD file is `fd`: every block NONE, size 0. NULL on ENOMEM. */
vmdi_data_t *vmdi_data_new (uint32_t image, int fd);

/* The file's size as JavaScript knows it: a native write must end at or before it. */
void vmdi_data_set_size (vmdi_data_t *t, uint64_t bytes);

/* Every block of [start, start + count) becomes `state`. 1, or 0 when state is not
 * a state, the range reaches 2^32 blocks, t is retired, or memory ran short (the
 * table then answers PASS to everything from then on). */
int vmdi_data_set (vmdi_data_t *t, uint64_t start, uint64_t count, int state);

/* Every block of the range becomes min(its state, max). 1 or 0 as vmdi_data_set. */
int vmdi_data_clamp (vmdi_data_t *t, uint64_t start, uint64_t count, int max);

/* The block's state (NONE past 2^32 blocks and after retire). The writer's thread only. */
int vmdi_data_get (vmdi_data_t *t, uint64_t block);

/* on: every write goes to JavaScript whatever the states (a scan is running). When
 * it returns, no native write that started before is still running. */
void vmdi_data_writes_to_js (vmdi_data_t *t, int on);

/* on: every read goes to JavaScript (it records what a booting VM reads); no wait: a
 * read already running natively is only not recorded. */
void vmdi_data_reads_to_js (vmdi_data_t *t, int on);

/* After it returns no native I/O runs or starts on t; its directory is freed. t
 * itself stays valid (a few KiB, never freed: a worker thread may still hold it)
 * and answers PASS. */
void vmdi_data_retire (vmdi_data_t *t);

/* Reads until len or EOF (as vmdi_direct_read): bytes, -errno on an error before
 * any progress, or VMDI_DATA_PASS. */
int vmdi_data_read (vmdi_data_t *t, char *buf, size_t len, off_t offset);

/* Writes all of buf (as vmdi_direct_write): len, a short count on an error after
 * progress, -errno, or VMDI_DATA_PASS. */
int vmdi_data_write (vmdi_data_t *t, const char *buf, size_t len, off_t offset);

/* out: reads, writes, read bytes, written bytes, last read and last write (ms since
 * the epoch, 0 = never), requests passed to JavaScript, bytes of the directory's
 * memory (bitmaps and second levels; not the fixed top array). */
void vmdi_data_stats (vmdi_data_t *t, uint64_t out[8]);

/* The image id and fd it was made with. */
uint32_t vmdi_data_image (vmdi_data_t *t);
int vmdi_data_fd (vmdi_data_t *t);

#endif
