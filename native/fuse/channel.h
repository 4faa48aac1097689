/*
 * channel.h: our own libfuse 2 channel over the kernel's /dev/fuse fd, for one thing
 * libfuse 2's API cannot say: FOPEN_PARALLEL_DIRECT_WRITES. Without it the kernel
 * takes a file's inode lock exclusively for every direct_io write, so writers of one
 * file queue for each other's whole round trip. The flag is set on the open replies
 * (OPEN, CREATE) of handles the direct path serves (stateless pwrite on the store
 * fd, see direct_path.h) and of image handles with a native data table (their
 * `parallel` byte, see direct_path.h): their ordering is the block-state table's
 * (block_state.h; the writes it passes on, the JavaScript datapath's, which orders
 * them itself). Image handles without a table keep the exclusive lock.
 *
 * Receive and send do what libfuse's kernel channel does (lib/fuse_kern_chan.c);
 * receive also notes the unique ids of OPEN and CREATE requests so that send can
 * recognise their replies.
 *
 * Locking: one mutex over the table of noted request ids (process-wide, as is the
 * count of replies flagged). The direct path's table is read with atomics.
 *
 * Callers: vmdi_chan_new from fuse_native_mount (Node main thread), in place of the
 * channel fuse_mount made; receive and send from the libfuse worker threads;
 * vmdi_chan_parallel_opens from fuse_native_direct_stats. vmdi_chan_note_request and
 * vmdi_chan_mark_reply are the steps of receive and send, exported for
 * native/test/channel_test.c.
 */
#ifndef VMDI_CHANNEL_H
#define VMDI_CHANNEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "direct_path.h"

struct fuse_chan;

/* The kernel protocol's numbers we use (linux/fuse.h). */
#define VMDI_FUSE_LOOKUP 1
#define VMDI_FUSE_GETATTR 3
#define VMDI_FUSE_SETATTR 4
#define VMDI_FUSE_SYMLINK 6
#define VMDI_FUSE_MKNOD 8
#define VMDI_FUSE_MKDIR 9
#define VMDI_FUSE_LINK 13
#define VMDI_FUSE_OPEN 14
#define VMDI_FUSE_CREATE 35
#define VMDI_FUSE_NOTIFY_INVAL_INODE 2
#define VMDI_FOPEN_DIRECT_IO (1 << 0)
#define VMDI_FOPEN_PARALLEL_DIRECT_WRITES (1 << 6)

/* OPEN/CREATE requests whose reply may be outstanding at once (older ids are overwritten). */
#define VMDI_OPENS_PENDING 256

/* A channel on kernel_chan's fd and buffer size whose open replies consult `direct`;
 * NULL on failure. kernel_chan is left unused (it owns nothing but the fd, which the
 * new channel closes when destroyed). */
struct fuse_chan *vmdi_chan_new (struct fuse_chan *kernel_chan, vmdi_direct_t *direct);

/* A request of `len` bytes (at least its header) was received: notes OPEN/CREATE ids. */
void vmdi_chan_note_request (const char *buf, size_t len);

/* A reply is about to be sent: sets FOPEN_PARALLEL_DIRECT_WRITES on a successful
 * open reply with direct_io of a handle the direct path serves or marked parallel;
 * forgets the id of a failed one. */
void vmdi_chan_mark_reply (vmdi_direct_t *direct, const struct iovec iov[], size_t count);

/* Added to the generation of every node id but the root's in entry replies (a
 * value of this daemon start, never used by an earlier one): file handles of an
 * earlier daemon, whose node ids the new one hands to other files, fail with
 * ESTALE instead of opening another file. */
void vmdi_chan_set_generation_base (uint32_t base);

/* The node id a successful LINK reply's file was linked from (its other name,
 * whose cached attributes the kernel must drop), or 0. Call from the thread that
 * received the request, as vmdi_chan_mark_reply. */
uint64_t vmdi_chan_link_source (const struct iovec iov[], size_t count);

/* Open replies flagged so far, over every mount of the process. */
uint64_t vmdi_chan_parallel_opens (void);

#endif
