/*
 * channel.c: the libfuse channel that sets FOPEN_PARALLEL_DIRECT_WRITES (see
 * channel.h for why, its locking and its callers).
 */
#define FUSE_USE_VERSION 29

#include "channel.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#include <fuse_lowlevel.h>

/* linux/fuse.h's fuse_in_header, fuse_out_header and fuse_open_out. */
struct vmdi_in_header { uint32_t len; uint32_t opcode; uint64_t unique; uint64_t nodeid; uint32_t uid, gid, pid, padding; };
struct vmdi_out_header { uint32_t len; int32_t error; uint64_t unique; };
struct vmdi_open_out { uint64_t fh; uint32_t open_flags; uint32_t padding; };
struct vmdi_attr {
  uint64_t ino, size, blocks, atime, mtime, ctime;
  uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, padding;
};
struct vmdi_entry_out {
  uint64_t nodeid, generation, entry_valid, attr_valid;
  uint32_t entry_valid_nsec, attr_valid_nsec;
  struct vmdi_attr attr;
};
struct vmdi_attr_out { uint64_t attr_valid; uint32_t attr_valid_nsec, dummy; struct vmdi_attr attr; };
struct vmdi_notify_inval_inode_out { uint64_t ino; int64_t off, len; };

/* The request this worker thread is answering: libfuse's high-level API (and
 * fuse-native, which blocks the thread until JavaScript answers) replies to a
 * request on the thread that received it. */
static __thread uint64_t cur_unique;
static __thread uint32_t cur_opcode;
static __thread uint64_t cur_link_old; /* LINK: the node id of the existing name */

static uint32_t generation_base = 0;

void vmdi_chan_set_generation_base (uint32_t base) {
  __atomic_store_n(&generation_base, base, __ATOMIC_RELAXED);
}

/* Attributes of a file with more than one name are never cached by the kernel
 * (attr_valid 0): libfuse 2's high-level API gives every name its own node id,
 * so a change through one name would leave the others stale, and the kernel's
 * permission checks (default_permissions) would use the stale copy. One-link
 * files and directories (which cannot be hard-linked) keep the mount's timeout. */
static int uncached (const struct vmdi_attr *a) {
  return a->nlink > 1 && (a->mode & 0170000) != 0040000;
}

static void mark_attrs (const struct vmdi_out_header *out, const struct iovec *payload) {
  if (out->error != 0 || out->unique != cur_unique || payload->iov_base == NULL) return;
  switch (cur_opcode) {
  case VMDI_FUSE_LOOKUP: case VMDI_FUSE_SYMLINK: case VMDI_FUSE_MKNOD: case VMDI_FUSE_MKDIR:
  case VMDI_FUSE_LINK: case VMDI_FUSE_CREATE: {
    if (payload->iov_len < sizeof(struct vmdi_entry_out)) return;
    struct vmdi_entry_out *e = (struct vmdi_entry_out *) payload->iov_base;
    if (e->nodeid == 0) return; /* a negative entry */
    if (uncached(&e->attr)) { e->attr_valid = 0; e->attr_valid_nsec = 0; }
    /* Node ids restart from 2 at every daemon start: a file handle (node id,
     * generation) of an earlier daemon must not name the new holder of its
     * node id. The root (node id 1) keeps generation 0, as the kernel's root. */
    if (e->nodeid != 1) e->generation = (uint32_t) (e->generation + __atomic_load_n(&generation_base, __ATOMIC_RELAXED));
    return;
  }
  case VMDI_FUSE_GETATTR: case VMDI_FUSE_SETATTR: {
    if (payload->iov_len < sizeof(struct vmdi_attr_out)) return;
    struct vmdi_attr_out *a = (struct vmdi_attr_out *) payload->iov_base;
    if (uncached(&a->attr)) { a->attr_valid = 0; a->attr_valid_nsec = 0; }
    return;
  }
  }
}

uint64_t vmdi_chan_link_source (const struct iovec iov[], size_t count) {
  if (count < 1 || iov[0].iov_len < sizeof(struct vmdi_out_header)) return 0;
  const struct vmdi_out_header *out = (const struct vmdi_out_header *) iov[0].iov_base;
  if (out->error != 0 || out->unique != cur_unique || cur_opcode != VMDI_FUSE_LINK) return 0;
  return cur_link_old;
}

static pthread_mutex_t opens_mut = PTHREAD_MUTEX_INITIALIZER;
static uint64_t opens[VMDI_OPENS_PENDING];
static uint32_t opens_next = 0;
static uint64_t parallel_opens = 0;

void vmdi_chan_note_request (const char *buf, size_t len) {
  if (len < sizeof(struct vmdi_in_header)) return;
  const struct vmdi_in_header *in = (const struct vmdi_in_header *) buf;
  cur_unique = in->unique;
  cur_opcode = in->opcode;
  cur_link_old = in->opcode == VMDI_FUSE_LINK && len >= sizeof(*in) + sizeof(uint64_t) ? *(const uint64_t *) (buf + sizeof(*in)) : 0;
  if (in->opcode == VMDI_FUSE_OPEN || in->opcode == VMDI_FUSE_CREATE) {
    pthread_mutex_lock(&opens_mut);
    opens[(opens_next++) % VMDI_OPENS_PENDING] = in->unique;
    pthread_mutex_unlock(&opens_mut);
  }
}

/* 1 when unique was noted (and forgets it). */
static int taken_open (uint64_t unique) {
  int found = 0;
  pthread_mutex_lock(&opens_mut);
  for (uint32_t i = 0; i < VMDI_OPENS_PENDING; i++) {
    if (opens[i] == unique && unique != 0) { opens[i] = 0; found = 1; break; }
  }
  pthread_mutex_unlock(&opens_mut);
  return found;
}

void vmdi_chan_mark_reply (vmdi_direct_t *direct, const struct iovec iov[], size_t count) {
  if (count >= 2 && iov[0].iov_len >= sizeof(struct vmdi_out_header)) mark_attrs((const struct vmdi_out_header *) iov[0].iov_base, &iov[1]);
  if (count >= 2 && iov[0].iov_len >= sizeof(struct vmdi_out_header) && iov[1].iov_len >= sizeof(struct vmdi_open_out)) {
    struct vmdi_out_header *out = (struct vmdi_out_header *) iov[0].iov_base;
    if (out->error == 0 && taken_open(out->unique)) {
      // OPEN's reply is fuse_open_out; CREATE's is fuse_entry_out then fuse_open_out.
      struct vmdi_open_out *o = (struct vmdi_open_out *) ((char *) iov[1].iov_base + iov[1].iov_len - sizeof(struct vmdi_open_out));
      if ((o->open_flags & VMDI_FOPEN_DIRECT_IO) && (vmdi_direct_fd(direct, o->fh) >= 0 || vmdi_direct_parallel(direct, o->fh))) {
        o->open_flags |= VMDI_FOPEN_PARALLEL_DIRECT_WRITES;
        __atomic_add_fetch(&parallel_opens, 1, __ATOMIC_RELAXED);
      }
    }
  } else if (count >= 1 && iov[0].iov_len >= sizeof(struct vmdi_out_header)) {
    struct vmdi_out_header *out = (struct vmdi_out_header *) iov[0].iov_base;
    if (out->error != 0) taken_open(out->unique);
  }
}

uint64_t vmdi_chan_parallel_opens (void) {
  return __atomic_load_n(&parallel_opens, __ATOMIC_RELAXED);
}

static int chan_receive (struct fuse_chan **chp, char *buf, size_t size) {
  struct fuse_chan *ch = *chp;
  struct fuse_session *se = fuse_chan_session(ch);
  ssize_t res;
  int err;
restart:
  res = read(fuse_chan_fd(ch), buf, size);
  err = errno;
  if (fuse_session_exited(se)) return 0;
  if (res == -1) {
    if (err == ENOENT) goto restart;
    if (err == ENODEV) { fuse_session_exit(se); return 0; }
    if (err != EINTR && err != EAGAIN) perror("fuse: reading device");
    return -err;
  }
  if ((size_t) res < sizeof(struct vmdi_in_header)) {
    fprintf(stderr, "short read on fuse device\n");
    return -EIO;
  }
  vmdi_chan_note_request(buf, (size_t) res);
  return (int) res;
}

/* Tells the kernel that the attributes it holds for node id `nodeid` are stale
 * (FUSE_NOTIFY_INVAL_INODE, offset -1: attributes only, the page cache kept). */
static void notify_inval_attrs (int fd, uint64_t nodeid) {
  struct vmdi_notify_inval_inode_out arg = { nodeid, -1, 0 };
  struct vmdi_out_header out = { (uint32_t) (sizeof out + sizeof arg), VMDI_FUSE_NOTIFY_INVAL_INODE, 0 };
  struct iovec iov[2] = { { &out, sizeof out }, { &arg, sizeof arg } };
  if (writev(fd, iov, 2) < 0 && errno != ENOENT) perror("fuse: notifying the kernel of stale attributes");
}

static int chan_send (struct fuse_chan *ch, const struct iovec iov[], size_t count) {
  if (iov == NULL) return 0;
  vmdi_chan_mark_reply((vmdi_direct_t *) fuse_chan_data(ch), iov, count);
  /* A new name of a file: the name it was linked from (its own node id, whose
   * cached attributes may be valid for attr_timeout) now has a stale link
   * count and ctime. Told before the reply, so the link(2) returns after it. */
  uint64_t linked = vmdi_chan_link_source(iov, count);
  if (linked != 0) notify_inval_attrs(fuse_chan_fd(ch), linked);
  ssize_t res = writev(fuse_chan_fd(ch), iov, count);
  int err = errno;
  if (res == -1) {
    struct fuse_session *se = fuse_chan_session(ch);
    // ENOENT: the request was interrupted
    if (!fuse_session_exited(se) && err != ENOENT) perror("fuse: writing device");
    return -err;
  }
  return 0;
}

static void chan_destroy (struct fuse_chan *ch) {
  close(fuse_chan_fd(ch));
}

static struct fuse_chan_ops chan_ops = {
  .receive = chan_receive,
  .send = chan_send,
  .destroy = chan_destroy,
};

struct fuse_chan *vmdi_chan_new (struct fuse_chan *kernel_chan, vmdi_direct_t *direct) {
  return fuse_chan_new(&chan_ops, fuse_chan_fd(kernel_chan), fuse_chan_bufsize(kernel_chan), direct);
}
