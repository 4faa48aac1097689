/*
 * direct_path_test.c: native/fuse/direct_path.c on its own: the handle table and
 * its limit, reads to EOF, writes, errors as -errno, the counters, the watchdog
 * slots (empty when idle, one per operation in flight) and the count of writes in
 * flight together. Built and run by test/native/c.test.ts.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "direct_path.h"
#include "check.h"

static vmdi_direct_t d;  /* zeroed, as fuse-native's Buffer.alloc leaves it */

static int new_file (void) {
  FILE *f = tmpfile();
  CHECK(f != NULL);
  int fd = dup(fileno(f));
  fclose(f);
  return fd;
}

static void test_table (void) {
  CHECK_EQ(-1, vmdi_direct_fd(&d, 1));
  CHECK_EQ(1, vmdi_direct_set(&d, 1, 0));  /* fd 0 is an fd like any other */
  CHECK_EQ(0, vmdi_direct_fd(&d, 1));
  CHECK_EQ(1, vmdi_direct_set(&d, 1, 7));
  CHECK_EQ(7, vmdi_direct_fd(&d, 1));
  CHECK_EQ(1, vmdi_direct_set(&d, 1, -1));
  CHECK_EQ(-1, vmdi_direct_fd(&d, 1));
  CHECK_EQ(1, vmdi_direct_set(&d, VMDI_FH_LIMIT - 1, 5));
  CHECK_EQ(5, vmdi_direct_fd(&d, VMDI_FH_LIMIT - 1));
  CHECK_EQ(0, vmdi_direct_set(&d, VMDI_FH_LIMIT, 5));
  CHECK_EQ(-1, vmdi_direct_fd(&d, VMDI_FH_LIMIT));
  CHECK_EQ(-1, vmdi_direct_fd(&d, (uint64_t) 1 << 40));
  CHECK_EQ(1, vmdi_direct_set(&d, VMDI_FH_LIMIT - 1, -1));
}

static void test_io (void) {
  int fd = new_file();
  char data[10000];
  for (int i = 0; i < (int) sizeof(data); i++) data[i] = (char) (i * 7);
  CHECK_EQ(sizeof(data), vmdi_direct_write(&d, 3, fd, data, sizeof(data), 100));
  char buf[20000];
  memset(buf, 1, sizeof(buf));
  /* a read to past EOF stops there; a hole reads as zeros */
  CHECK_EQ(100 + sizeof(data), vmdi_direct_read(&d, 3, fd, buf, sizeof(buf), 0));
  for (int i = 0; i < 100; i++) CHECK_EQ(0, buf[i]);
  CHECK(memcmp(buf + 100, data, sizeof(data)) == 0);
  CHECK_EQ(0, vmdi_direct_read(&d, 3, fd, buf, 10, 1 << 20));
  /* errors before any progress are -errno */
  CHECK_EQ(-EBADF, vmdi_direct_read(&d, 3, -1, buf, 10, 0));
  CHECK_EQ(-EBADF, vmdi_direct_write(&d, 3, -1, data, 10, 0));
  int p[2];
  CHECK(pipe(p) == 0);
  CHECK_EQ(-ESPIPE, vmdi_direct_read(&d, 3, p[0], buf, 10, 0));
  close(p[0]);
  close(p[1]);
  CHECK_EQ(2, d.writes);
  CHECK_EQ(4, d.reads);
  CHECK_EQ(sizeof(data), d.write_bytes);
  CHECK_EQ(100 + sizeof(data), d.read_bytes);
  /* nothing in flight now, whatever the age asked for */
  vmdi_direct_op_t ops[VMDI_DIRECT_SLOTS];
  CHECK_EQ(0, vmdi_direct_slow(&d, 0, ops));
  for (int i = 0; i < VMDI_DIRECT_SLOTS; i++) CHECK_EQ(0, d.slot[i]);
  CHECK(vmdi_direct_writes_together_max() >= 1);
  close(fd);
}

/* Many threads reading and writing at once: every operation counted, every
 * watchdog slot free again afterwards. */
#define THREADS 8
#define ROUNDS 2000
static int shared_fd;

static void *hammer (void *arg) {
  uint64_t fh = (uint64_t) (uintptr_t) arg;
  char b[512];
  memset(b, (int) fh, sizeof(b));
  for (int i = 0; i < ROUNDS; i++) {
    if (vmdi_direct_write(&d, fh, shared_fd, b, sizeof(b), (off_t) (fh * ROUNDS + i) * 512) != 512) return (void *) 1;
    char r[512];
    if (vmdi_direct_read(&d, fh, shared_fd, r, sizeof(r), (off_t) (fh * ROUNDS + i) * 512) != 512 || memcmp(r, b, 512) != 0) return (void *) 1;
  }
  return NULL;
}

static void test_threads (void) {
  shared_fd = new_file();
  uint64_t reads = d.reads, writes = d.writes;
  pthread_t t[THREADS];
  for (uintptr_t i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, hammer, (void *) i) == 0);
  for (int i = 0; i < THREADS; i++) {
    void *res;
    CHECK(pthread_join(t[i], &res) == 0);
    CHECK(res == NULL);
  }
  CHECK_EQ(reads + THREADS * ROUNDS, d.reads);
  CHECK_EQ(writes + THREADS * ROUNDS, d.writes);
  for (int i = 0; i < VMDI_DIRECT_SLOTS; i++) CHECK_EQ(0, d.slot[i]);
  CHECK(vmdi_direct_writes_together_max() <= THREADS);
  close(shared_fd);
}

/* No ordinary fd makes pread or pwrite block (pipes fail with ESPIPE), so the
 * listing of long operations is checked on planted slots. */
static void test_slow_listing (void) {
  uint64_t now = vmdi_now_ms();
  d.slot[5] = ((uint64_t) (41 + 1) << 1) | 1;  /* fh 41, a write */
  d.start[5] = now - 20000;
  d.slot[9] = ((uint64_t) (7 + 1) << 1);       /* fh 7, a read, just started */
  d.start[9] = now;
  vmdi_direct_op_t ops[VMDI_DIRECT_SLOTS];
  CHECK_EQ(1, vmdi_direct_slow(&d, 17000, ops));
  CHECK_EQ(41, ops[0].fh);
  CHECK_EQ(1, ops[0].is_write);
  CHECK_EQ(now - 20000, ops[0].started);
  CHECK_EQ(2, vmdi_direct_slow(&d, 0, ops));
  CHECK_EQ(7, ops[1].fh);
  CHECK_EQ(0, ops[1].is_write);
  d.slot[5] = 0;
  d.slot[9] = 0;
}

int main (void) {
  test_table();
  test_io();
  test_threads();
  test_slow_listing();
  CHECKS_DONE();
}
