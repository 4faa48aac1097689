/*
 * direct_path.h: read and write of plain pass-through files on the libfuse worker
 * thread. JavaScript (src/fuse/passthrough.ts) registers, per file handle below
 * VMDI_FH_LIMIT, the store fd of a file it serves as a plain pass-through; reads and
 * writes of that handle are then pread/pwrite on that fd here, with no JS round
 * trip. Images never get an entry (their I/O goes through the datapath).
 *
 * Also per handle: `parallel`, set for image handles with a native data table
 * (block_state.h, registered by fuse_native_data_fh), which channel.c's open
 * replies consult as they consult `fds`.
 *
 * Also kept: counters for `vmdi-fuse status`, and in-flight slots (handle, read or
 * write, start time) that the daemon's slow-operation watchdog lists.
 *
 * Locking: none; every field is read and written with atomics. An entry is set by
 * JavaScript before the open reply goes out and dropped after release, so a worker
 * thread never sees the fd of another file.
 *
 * Callers: vmdi_direct_fd/parallel/read/write from the libfuse worker threads (the
 * read and write hooks in native/fuse/vmdi_fuse.c, and channel.c's open replies);
 * set, set_parallel, slow and the counters from the Node main thread (the addon's
 * fuse_native_set_direct, fuse_native_data_fh, fuse_native_direct_slow,
 * fuse_native_direct_stats). No libfuse or N-API in here:
 * native/test/direct_path_test.c runs it alone.
 */
#ifndef VMDI_DIRECT_PATH_H
#define VMDI_DIRECT_PATH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vmdi_constants.h"

/* In-flight operations tracked for the watchdog; more run untracked. */
#define VMDI_DIRECT_SLOTS 256

typedef struct {
  int fds[VMDI_FH_LIMIT];             /* per file handle: store fd + 1, 0 = not direct */
  uint8_t parallel[VMDI_FH_LIMIT];    /* per file handle: 1 = an image handle whose writes its data table orders */
  uint64_t reads;
  uint64_t writes;
  uint64_t read_bytes;
  uint64_t write_bytes;
  uint64_t slot[VMDI_DIRECT_SLOTS];   /* (fh + 1) << 1 | is_write, 0 = free */
  uint64_t start[VMDI_DIRECT_SLOTS];  /* its start, ms since the epoch */
} vmdi_direct_t;

typedef struct {
  uint64_t fh;
  int is_write;
  uint64_t started;  /* ms since the epoch */
} vmdi_direct_op_t;

uint64_t vmdi_now_ms (void);

/* fd >= 0: serve handle fh with it; fd < 0: stop. 0 when fh is too large for the table. */
int vmdi_direct_set (vmdi_direct_t *d, uint32_t fh, int32_t fd);

/* The store fd registered for handle fh, or -1. */
int vmdi_direct_fd (vmdi_direct_t *d, uint64_t fh);

/* Handle fh's writes may run in parallel (on) or not; 0 when fh is too large for the table. */
int vmdi_direct_set_parallel (vmdi_direct_t *d, uint32_t fh, int on);

/* 1 when handle fh's writes may run in parallel although it has no store fd. */
int vmdi_direct_parallel (vmdi_direct_t *d, uint64_t fh);

/* Reads until len or EOF, as the JS path does: the byte count, or -errno on an error before any progress. */
int vmdi_direct_read (vmdi_direct_t *d, uint64_t fh, int fd, char *buf, size_t len, off_t offset);

/* Writes all of buf: len, a short count on an error after progress, or -errno. */
int vmdi_direct_write (vmdi_direct_t *d, uint64_t fh, int fd, const char *buf, size_t len, off_t offset);

/* Operations in flight since at least `ms` before now, into out; returns how many. */
int vmdi_direct_slow (vmdi_direct_t *d, uint32_t ms, vmdi_direct_op_t out[VMDI_DIRECT_SLOTS]);

/* The most native writes (direct path and native data path) ever in flight together, over every mount of the process. */
uint64_t vmdi_direct_writes_together_max (void);

/* A native write starts / ends (the count behind vmdi_direct_writes_together_max). */
void vmdi_writes_begin (void);
void vmdi_writes_end (void);

#endif
