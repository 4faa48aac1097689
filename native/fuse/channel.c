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

static pthread_mutex_t opens_mut = PTHREAD_MUTEX_INITIALIZER;
static uint64_t opens[VMDI_OPENS_PENDING];
static uint32_t opens_next = 0;
static uint64_t parallel_opens = 0;

void vmdi_chan_note_request (const char *buf, size_t len) {
  if (len < sizeof(struct vmdi_in_header)) return;
  const struct vmdi_in_header *in = (const struct vmdi_in_header *) buf;
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
  if (count >= 2 && iov[0].iov_len >= sizeof(struct vmdi_out_header) && iov[1].iov_len >= sizeof(struct vmdi_open_out)) {
    struct vmdi_out_header *out = (struct vmdi_out_header *) iov[0].iov_base;
    if (out->error == 0 && taken_open(out->unique)) {
      // OPEN's reply is fuse_open_out; CREATE's is fuse_entry_out then fuse_open_out.
      struct vmdi_open_out *o = (struct vmdi_open_out *) ((char *) iov[1].iov_base + iov[1].iov_len - sizeof(struct vmdi_open_out));
      if ((o->open_flags & VMDI_FOPEN_DIRECT_IO) && vmdi_direct_fd(direct, o->fh) >= 0) {
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

static int chan_send (struct fuse_chan *ch, const struct iovec iov[], size_t count) {
  if (iov == NULL) return 0;
  vmdi_chan_mark_reply((vmdi_direct_t *) fuse_chan_data(ch), iov, count);
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
