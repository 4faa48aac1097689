/*
 * direct_path.c: pread/pwrite of pass-through file handles on the libfuse worker
 * thread (see direct_path.h for who calls what; no locks, only atomics).
 */
#include "direct_path.h"

#include <errno.h>
#include <time.h>
#include <unistd.h>

/* Direct writes in flight now, and the most ever seen together: shows parallel
 * direct writes (channel.c's FOPEN_PARALLEL_DIRECT_WRITES) at work. */
static uint64_t writes_inflight = 0;
static uint64_t writes_inflight_max = 0;

uint64_t vmdi_now_ms (void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int vmdi_direct_set (vmdi_direct_t *d, uint32_t fh, int32_t fd) {
  if (fh >= VMDI_FH_LIMIT) return 0;
  __atomic_store_n(&(d->fds[fh]), fd < 0 ? 0 : fd + 1, __ATOMIC_RELEASE);
  return 1;
}

int vmdi_direct_fd (vmdi_direct_t *d, uint64_t fh) {
  if (fh >= VMDI_FH_LIMIT) return -1;
  return __atomic_load_n(&(d->fds[fh]), __ATOMIC_ACQUIRE) - 1;
}

int vmdi_direct_set_parallel (vmdi_direct_t *d, uint32_t fh, int on) {
  if (fh >= VMDI_FH_LIMIT) return 0;
  __atomic_store_n(&(d->parallel[fh]), on ? 1 : 0, __ATOMIC_RELEASE);
  return 1;
}

int vmdi_direct_parallel (vmdi_direct_t *d, uint64_t fh) {
  if (fh >= VMDI_FH_LIMIT) return 0;
  return __atomic_load_n(&(d->parallel[fh]), __ATOMIC_ACQUIRE);
}

/* A watchdog slot for an operation, or -1 when all are busy (it goes untracked). */
static int slot_claim (vmdi_direct_t *d, uint64_t fh, int is_write) {
  uint64_t tag = ((fh + 1) << 1) | (uint64_t) is_write;
  for (int i = 0; i < VMDI_DIRECT_SLOTS; i++) {
    uint64_t expected = 0;
    if (__atomic_load_n(&(d->slot[i]), __ATOMIC_RELAXED) != 0) continue;
    __atomic_store_n(&(d->start[i]), vmdi_now_ms(), __ATOMIC_RELAXED);
    if (__atomic_compare_exchange_n(&(d->slot[i]), &expected, tag, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) return i;
  }
  return -1;
}

static void slot_release (vmdi_direct_t *d, int slot) {
  if (slot >= 0) __atomic_store_n(&(d->slot[slot]), 0, __ATOMIC_RELEASE);
}

int vmdi_direct_read (vmdi_direct_t *d, uint64_t fh, int fd, char *buf, size_t len, off_t offset) {
  int slot = slot_claim(d, fh, 0);
  size_t done = 0;
  int err = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf + done, len - done, offset + done);
    if (n < 0) { if (errno == EINTR) continue; err = errno; break; }
    if (n == 0) break;
    done += n;
  }
  slot_release(d, slot);
  __atomic_add_fetch(&(d->reads), 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&(d->read_bytes), done, __ATOMIC_RELAXED);
  return done == 0 && err ? -err : (int) done;
}

void vmdi_writes_begin (void) {
  uint64_t together = __atomic_add_fetch(&writes_inflight, 1, __ATOMIC_ACQ_REL);
  uint64_t seen = __atomic_load_n(&writes_inflight_max, __ATOMIC_RELAXED);
  while (together > seen && !__atomic_compare_exchange_n(&writes_inflight_max, &seen, together, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
}

void vmdi_writes_end (void) {
  __atomic_sub_fetch(&writes_inflight, 1, __ATOMIC_ACQ_REL);
}

int vmdi_direct_write (vmdi_direct_t *d, uint64_t fh, int fd, const char *buf, size_t len, off_t offset) {
  vmdi_writes_begin();
  int slot = slot_claim(d, fh, 1);
  size_t done = 0;
  int err = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, buf + done, len - done, offset + done);
    if (n < 0) { if (errno == EINTR) continue; err = errno; break; }
    done += n;
  }
  slot_release(d, slot);
  vmdi_writes_end();
  __atomic_add_fetch(&(d->writes), 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&(d->write_bytes), done, __ATOMIC_RELAXED);
  return done == 0 && err ? -err : (int) done;
}

int vmdi_direct_slow (vmdi_direct_t *d, uint32_t ms, vmdi_direct_op_t out[VMDI_DIRECT_SLOTS]) {
  uint64_t now = vmdi_now_ms();
  int k = 0;
  for (int i = 0; i < VMDI_DIRECT_SLOTS; i++) {
    uint64_t tag = __atomic_load_n(&(d->slot[i]), __ATOMIC_ACQUIRE);
    if (tag == 0) continue;
    uint64_t start = __atomic_load_n(&(d->start[i]), __ATOMIC_RELAXED);
    if (now < start + ms) continue;
    out[k].fh = (tag >> 1) - 1;
    out[k].is_write = (int) (tag & 1);
    out[k].started = start;
    k++;
  }
  return k;
}

uint64_t vmdi_direct_writes_together_max (void) {
  return __atomic_load_n(&writes_inflight_max, __ATOMIC_RELAXED);
}
