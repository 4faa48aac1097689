/*
 * vmdi_fuse.h: what fuse-native's C (as patched by patches/fuse-native+2.2.6.patch)
 * calls of ours. fuse_thread_t, fuse-native's per-mount state, embeds one
 * vmdi_fuse_t; the patch's hooks pass it here:
 *
 *   - the read and write handlers first offer the request to vmdi_fuse_read /
 *     vmdi_fuse_write (libfuse worker threads): the direct path (direct_path.h), then
 *     for reads the RAM index (ram_index.h), then the handle's native data table
 *     (block_state.h); VMDI_FUSE_PASS sends it on to JavaScript;
 *   - fuse_native_mount replaces fuse_mount's channel with vmdi_chan_new's
 *     (channel.h), handing it &vmdi.direct;
 *   - NAPI_INIT calls vmdi_fuse_export, which adds the addon's fuse_native_set_direct,
 *     fuse_native_direct_*, fuse_native_ram_*, fuse_native_data_* functions and the
 *     `vmdi_constants` object. Those functions take the fuse_thread_t Buffer
 *     JavaScript allocated and find the vmdi_fuse_t in it at the offset given here
 *     (fuse_native_data_* but _fh take a table, an External, instead).
 *
 * Locking: see each part's header. This file's own per-handle tables (ram_image,
 * ram_fd, data) are read and written with atomics.
 */
#ifndef VMDI_FUSE_H
#define VMDI_FUSE_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <node_api.h>

#include "vmdi_constants.h"
#include "direct_path.h"
#include "ram_index.h"
#include "block_state.h"
#include "channel.h"

typedef struct {
  vmdi_direct_t direct;
  vmdi_ram_t *ram;                     /* made by fuse_native_ram_init, then kept for the process */
  uint32_t ram_image[VMDI_FH_LIMIT];   /* per file handle: image id + 1, 0 = not served from RAM */
  int ram_fd[VMDI_FH_LIMIT];           /* and the image's HDD file (its size bounds what is answered) */
  vmdi_data_t *data[VMDI_FH_LIMIT];    /* per file handle: the image's native data table, NULL = none */
} vmdi_fuse_t;

/* Returned by the hooks when JavaScript is to serve the request. */
#define VMDI_FUSE_PASS INT_MIN

struct fuse_file_info;

/* A read on a libfuse worker thread: bytes or -errno when served here, else VMDI_FUSE_PASS. */
int vmdi_fuse_read (vmdi_fuse_t *v, struct fuse_file_info *info, char *buf, size_t len, off_t offset);

/* A write on a libfuse worker thread: bytes or -errno when served here, else VMDI_FUSE_PASS. */
int vmdi_fuse_write (vmdi_fuse_t *v, struct fuse_file_info *info, const char *buf, size_t len, off_t offset);

/* Adds our functions and constants to the addon's exports; `offset` is
 * offsetof(fuse_thread_t, vmdi). */
void vmdi_fuse_export (napi_env env, napi_value exports, size_t offset);

#endif
