/*
 * block_state_test.c: native/fuse/block_state.c on its own: set, clamp and get over
 * ranges crossing chunk and second-level boundaries; sentinels (whole chunks and
 * whole second levels cost no bitmap, a 2 TiB range a few KiB at most); bitmaps
 * for partial chunks; retire; reads and writes against a temporary file (PASS for
 * NONE blocks, READ blocks on write, writes past the size, past 2^32 blocks, over
 * more than 4 stripes, while writes go to JavaScript; the bytes otherwise, short
 * reads at EOF, the counters); the ordering (once a set, writes_to_js or retire
 * returns, no native write that the change forbids lands any more); a run of a
 * million random operations against a shadow array. Built and run by
 * test/native/c.test.ts.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "block_state.h"
#include "check.h"

#define B VMDI_BLOCK_SIZE
#define CB ((uint64_t) VMDI_DATA_CHUNK_BLOCKS)
#define REGION (CB * VMDI_DATA_SECOND)   /* blocks under one top entry */
#define LIMIT VMDI_DATA_BLOCK_LIMIT
#define NONE VMDI_NATIVE_NONE
#define READ VMDI_NATIVE_READ
#define RW VMDI_NATIVE_RW
#define PASS VMDI_DATA_PASS
#define SECOND_BYTES (VMDI_DATA_SECOND * sizeof(void *))

static uint64_t stat_of (vmdi_data_t *t, int i) {
  uint64_t s[8];
  vmdi_data_stats(t, s);
  return s[i];
}
#define TABLE_BYTES(t) stat_of(t, 7)

static int new_file (void) {
  FILE *f = tmpfile();
  CHECK(f != NULL);
  int fd = dup(fileno(f));
  fclose(f);
  return fd;
}

/* Every block of [from, to) has state s (checked at the ends and at chunk edges, and all of them when few). */
static void check_range (vmdi_data_t *t, uint64_t from, uint64_t to, int s) {
  if (to - from <= 3 * CB) {
    for (uint64_t b = from; b < to; b++) CHECK_EQ(s, vmdi_data_get(t, b));
    return;
  }
  CHECK_EQ(s, vmdi_data_get(t, from));
  CHECK_EQ(s, vmdi_data_get(t, to - 1));
  for (uint64_t b = (from + CB) & ~(CB - 1); b < to; b += CB * 997) {
    CHECK_EQ(s, vmdi_data_get(t, b));
    CHECK_EQ(s, vmdi_data_get(t, b - 1));
  }
}

static void test_states (void) {
  vmdi_data_t *t = vmdi_data_new(7, -1);
  CHECK(t != NULL);
  CHECK_EQ(7, vmdi_data_image(t));
  CHECK_EQ(-1, vmdi_data_fd(t));
  CHECK_EQ(NONE, vmdi_data_get(t, 0));
  CHECK_EQ(NONE, vmdi_data_get(t, LIMIT - 1));
  CHECK_EQ(NONE, vmdi_data_get(t, LIMIT));
  CHECK_EQ(0, TABLE_BYTES(t));

  /* refused: no such state, past 2^32 blocks */
  CHECK_EQ(0, vmdi_data_set(t, 0, 1, 3));
  CHECK_EQ(0, vmdi_data_set(t, 0, 1, -1));
  CHECK_EQ(0, vmdi_data_clamp(t, 0, 1, 3));
  CHECK_EQ(0, vmdi_data_set(t, LIMIT - 1, 2, RW));
  CHECK_EQ(0, vmdi_data_set(t, LIMIT, 1, RW));
  CHECK_EQ(0, vmdi_data_set(t, 5, UINT64_MAX, RW));
  CHECK_EQ(1, vmdi_data_set(t, 5, 0, RW));
  CHECK_EQ(NONE, vmdi_data_get(t, 5));

  /* the last block of the table */
  CHECK_EQ(1, vmdi_data_set(t, LIMIT - 1, 1, RW));
  CHECK_EQ(RW, vmdi_data_get(t, LIMIT - 1));
  CHECK_EQ(NONE, vmdi_data_get(t, LIMIT - 2));
  CHECK_EQ(SECOND_BYTES + VMDI_DATA_CHUNK_BYTES, TABLE_BYTES(t));
  CHECK_EQ(1, vmdi_data_set(t, LIMIT - 1, 1, NONE));
  CHECK_EQ(0, TABLE_BYTES(t));  /* the bitmap went back to NULL, the second level too */

  /* a range crossing a chunk boundary: two partial chunks, two bitmaps */
  CHECK_EQ(1, vmdi_data_set(t, CB - 3, 8, RW));
  CHECK_EQ(NONE, vmdi_data_get(t, CB - 4));
  check_range(t, CB - 3, CB + 5, RW);
  CHECK_EQ(NONE, vmdi_data_get(t, CB + 5));
  CHECK_EQ(SECOND_BYTES + 2 * VMDI_DATA_CHUNK_BYTES, TABLE_BYTES(t));
  CHECK_EQ(1, vmdi_data_clamp(t, CB - 1, 2, READ));
  CHECK_EQ(RW, vmdi_data_get(t, CB - 2));
  CHECK_EQ(READ, vmdi_data_get(t, CB - 1));
  CHECK_EQ(READ, vmdi_data_get(t, CB));
  CHECK_EQ(RW, vmdi_data_get(t, CB + 1));
  CHECK_EQ(1, vmdi_data_clamp(t, 0, 10 * CB, RW));  /* nothing above RW: no change */
  CHECK_EQ(RW, vmdi_data_get(t, CB - 2));
  CHECK_EQ(1, vmdi_data_set(t, 0, 2 * CB, NONE));   /* whole chunks: their bitmaps go */
  check_range(t, 0, 3 * CB, NONE);
  CHECK_EQ(0, TABLE_BYTES(t));

  /* whole chunks: sentinels, no bitmap (only the region's second level) */
  CHECK_EQ(1, vmdi_data_set(t, CB, 2 * CB, READ));
  check_range(t, CB, 3 * CB, READ);
  CHECK_EQ(NONE, vmdi_data_get(t, CB - 1));
  CHECK_EQ(NONE, vmdi_data_get(t, 3 * CB));
  CHECK_EQ(SECOND_BYTES, TABLE_BYTES(t));
  /* a partial set in a sentinel chunk makes a bitmap of the sentinel's state */
  CHECK_EQ(1, vmdi_data_set(t, CB + 100, 1, RW));
  CHECK_EQ(READ, vmdi_data_get(t, CB + 99));
  CHECK_EQ(RW, vmdi_data_get(t, CB + 100));
  CHECK_EQ(READ, vmdi_data_get(t, CB + 101));
  CHECK_EQ(SECOND_BYTES + VMDI_DATA_CHUNK_BYTES, TABLE_BYTES(t));
  /* and a bitmap of one state again is a sentinel again */
  CHECK_EQ(1, vmdi_data_set(t, CB + 100, 1, READ));
  CHECK_EQ(SECOND_BYTES, TABLE_BYTES(t));
  /* clamp of a partial sentinel chunk */
  CHECK_EQ(1, vmdi_data_clamp(t, 2 * CB + 5, 10, NONE));
  CHECK_EQ(READ, vmdi_data_get(t, 2 * CB + 4));
  check_range(t, 2 * CB + 5, 2 * CB + 15, NONE);
  CHECK_EQ(READ, vmdi_data_get(t, 2 * CB + 15));
  CHECK_EQ(1, vmdi_data_clamp(t, 2 * CB, CB, READ));  /* at or below READ already */
  CHECK_EQ(READ, vmdi_data_get(t, 2 * CB + 4));
  CHECK_EQ(1, vmdi_data_set(t, 0, REGION, NONE));
  CHECK_EQ(0, TABLE_BYTES(t));

  /* block by block to RW over a chunk and a bit: bitmaps, then the sentinel */
  for (uint64_t b = 5 * CB - 1; b <= 6 * CB; b++) CHECK_EQ(1, vmdi_data_set(t, b, 1, RW));
  check_range(t, 5 * CB - 1, 6 * CB + 1, RW);
  CHECK_EQ(SECOND_BYTES + 2 * VMDI_DATA_CHUNK_BYTES, TABLE_BYTES(t));
  CHECK_EQ(1, vmdi_data_set(t, 5 * CB - 1, CB + 2, NONE));
  CHECK_EQ(0, TABLE_BYTES(t));

  /* whole second levels: a top-level sentinel, nothing allocated */
  CHECK_EQ(1, vmdi_data_set(t, 0, REGION, RW));
  CHECK_EQ(0, TABLE_BYTES(t));
  check_range(t, 0, REGION, RW);
  CHECK_EQ(NONE, vmdi_data_get(t, REGION));
  /* a range crossing second levels: partial at both ends */
  CHECK_EQ(1, vmdi_data_set(t, REGION - 10, 20, READ));
  CHECK_EQ(RW, vmdi_data_get(t, REGION - 11));
  check_range(t, REGION - 10, REGION + 10, READ);
  CHECK_EQ(NONE, vmdi_data_get(t, REGION + 10));
  CHECK_EQ(2 * (SECOND_BYTES + VMDI_DATA_CHUNK_BYTES), TABLE_BYTES(t));
  CHECK_EQ(1, vmdi_data_set(t, 0, 2 * REGION, NONE));
  CHECK_EQ(0, TABLE_BYTES(t));

  /* 2 TiB (2^29 blocks) to RW, then clamped: sentinels, a few KiB at the unaligned ends */
  const uint64_t TIB2 = (uint64_t) 1 << 29;
  CHECK_EQ(1, vmdi_data_set(t, REGION, TIB2, RW));
  CHECK_EQ(0, TABLE_BYTES(t));
  check_range(t, REGION, REGION + TIB2, RW);
  CHECK_EQ(NONE, vmdi_data_get(t, REGION - 1));
  CHECK_EQ(NONE, vmdi_data_get(t, REGION + TIB2));
  CHECK_EQ(1, vmdi_data_clamp(t, REGION + 5, TIB2 - 10, READ));
  CHECK(TABLE_BYTES(t) <= 2 * (SECOND_BYTES + VMDI_DATA_CHUNK_BYTES));
  check_range(t, REGION, REGION + 5, RW);
  check_range(t, REGION + 5, REGION + TIB2 - 5, READ);
  check_range(t, REGION + TIB2 - 5, REGION + TIB2, RW);
  CHECK_EQ(1, vmdi_data_clamp(t, 0, LIMIT, NONE));
  CHECK_EQ(0, TABLE_BYTES(t));
  check_range(t, 0, LIMIT, NONE);

  /* the whole table, one state, then another: nothing allocated */
  CHECK_EQ(1, vmdi_data_set(t, 0, LIMIT, READ));
  CHECK_EQ(0, TABLE_BYTES(t));
  check_range(t, 0, LIMIT, READ);

  /* retire frees the directory; the table then answers NONE and refuses changes */
  CHECK_EQ(1, vmdi_data_set(t, 77, 3, RW));
  CHECK(TABLE_BYTES(t) > 0);
  vmdi_data_retire(t);
  CHECK_EQ(0, TABLE_BYTES(t));
  CHECK_EQ(NONE, vmdi_data_get(t, 77));
  CHECK_EQ(NONE, vmdi_data_get(t, 5));
  CHECK_EQ(0, vmdi_data_set(t, 0, 1, RW));
  CHECK_EQ(0, vmdi_data_clamp(t, 0, 1, NONE));
  vmdi_data_retire(t);  /* twice is harmless */
  char buf[16];
  CHECK_EQ(PASS, vmdi_data_read(t, buf, sizeof(buf), 0));
  free(t);  /* the binding never frees a table (a worker thread may hold it); the test may */
}

static void test_io (void) {
  int fd = new_file();
  vmdi_data_t *t = vmdi_data_new(1, fd);
  CHECK(t != NULL);
  static char data[12 * B], buf[16 * B];
  for (size_t i = 0; i < sizeof(data); i++) data[i] = (char) (i * 13 + 1);
  CHECK_EQ(sizeof(data), pwrite(fd, data, sizeof(data), 0));
  vmdi_data_set_size(t, sizeof(data));

  /* NONE blocks: PASS */
  CHECK_EQ(PASS, vmdi_data_read(t, buf, B, 0));
  CHECK_EQ(PASS, vmdi_data_write(t, data, B, 0));
  CHECK_EQ(PASS, vmdi_data_read(t, buf, 0, 0));
  CHECK_EQ(PASS, vmdi_data_read(t, buf, 10, -1));

  /* READ blocks 0..7: reads served, writes PASS */
  CHECK_EQ(1, vmdi_data_set(t, 0, 8, READ));
  memset(buf, 0, sizeof(buf));
  CHECK_EQ(3 * B, vmdi_data_read(t, buf, 3 * B, 100));
  CHECK(memcmp(buf, data + 100, 3 * B) == 0);
  CHECK_EQ(PASS, vmdi_data_read(t, buf, 2 * B, 7 * B));  /* block 8 is NONE */
  CHECK_EQ(PASS, vmdi_data_write(t, data, 10, 0));

  /* RW blocks 8..15: reads and writes; EOF reads short; past the size PASS */
  CHECK_EQ(1, vmdi_data_set(t, 8, 8, RW));
  CHECK_EQ(5 * B, vmdi_data_read(t, buf, 5 * B, 7 * B));  /* READ and RW together; EOF at 12 blocks */
  CHECK(memcmp(buf, data + 7 * B, 5 * B) == 0);
  CHECK_EQ(0, vmdi_data_read(t, buf, B, 13 * B));         /* all past EOF */
  const char *msg = "written natively";
  CHECK_EQ(strlen(msg), vmdi_data_write(t, msg, strlen(msg), 9 * B + 3));
  CHECK_EQ(strlen(msg), pread(fd, buf, strlen(msg), 9 * B + 3));
  CHECK(memcmp(buf, msg, strlen(msg)) == 0);
  CHECK_EQ(B, vmdi_data_write(t, data, B, 11 * B));       /* ends at the size */
  CHECK_EQ(PASS, vmdi_data_write(t, data, B + 1, 11 * B)); /* would grow the file */
  CHECK_EQ(PASS, vmdi_data_write(t, data, 2 * B, 7 * B)); /* block 7 is READ */
  vmdi_data_set_size(t, 16 * B);
  CHECK_EQ(B + 1, vmdi_data_write(t, data, B + 1, 11 * B));

  /* writes to JavaScript while a scan runs; reads go on */
  vmdi_data_writes_to_js(t, 1);
  CHECK_EQ(PASS, vmdi_data_write(t, data, 10, 8 * B));
  CHECK_EQ(10, vmdi_data_read(t, buf, 10, 8 * B));
  vmdi_data_writes_to_js(t, 0);
  CHECK_EQ(10, vmdi_data_write(t, data, 10, 8 * B));

  /* reads to JavaScript while a VM boots (it records them); writes go on */
  vmdi_data_reads_to_js(t, 1);
  CHECK_EQ(PASS, vmdi_data_read(t, buf, 10, 8 * B));
  CHECK_EQ(10, vmdi_data_write(t, data, 10, 8 * B));
  vmdi_data_reads_to_js(t, 0);
  CHECK_EQ(10, vmdi_data_read(t, buf, 10, 8 * B));

  /* errors: -errno */
  vmdi_data_t *bad = vmdi_data_new(2, -1);
  CHECK_EQ(1, vmdi_data_set(bad, 0, 4, RW));
  vmdi_data_set_size(bad, 4 * B);
  CHECK_EQ(-EBADF, vmdi_data_read(bad, buf, 10, 0));
  CHECK_EQ(-EBADF, vmdi_data_write(bad, data, 10, 0));
  vmdi_data_retire(bad);
  free(bad);

  /* past 2^32 blocks: PASS, even with the last block RW (on /dev/null: no file system takes 16 TiB) */
  vmdi_data_t *far = vmdi_data_new(3, open("/dev/null", O_RDWR));
  CHECK_EQ(1, vmdi_data_set(far, LIMIT - 1, 1, RW));
  vmdi_data_set_size(far, UINT64_MAX);
  CHECK_EQ(B, vmdi_data_write(far, data, B, (off_t) ((LIMIT - 1) * B)));  /* the last block itself */
  CHECK_EQ(0, vmdi_data_read(far, buf, B, (off_t) ((LIMIT - 1) * B)));
  CHECK_EQ(PASS, vmdi_data_read(far, buf, B + 1, (off_t) ((LIMIT - 1) * B)));
  CHECK_EQ(PASS, vmdi_data_write(far, data, B + 1, (off_t) ((LIMIT - 1) * B)));
  CHECK_EQ(PASS, vmdi_data_read(far, buf, B, (off_t) (LIMIT * B)));
  CHECK_EQ(PASS, vmdi_data_read(far, buf, B, (off_t) ((uint64_t) 1 << 62)));
  close(vmdi_data_fd(far));
  vmdi_data_retire(far);
  free(far);

  /* 4 stripes (chunks) at most: a read over chunks 0..3 is served (short at EOF), over 0..4 not */
  CHECK_EQ(1, vmdi_data_set(t, 0, 6 * CB, READ));
  size_t big = 4 * CB * B;
  char *huge = malloc(big + B);
  CHECK(huge != NULL);
  CHECK_EQ(sizeof(data) + 1, vmdi_data_read(t, huge, big, 0));  /* the B + 1 write grew the file by a byte */
  CHECK_EQ(PASS, vmdi_data_read(t, huge, big, 10));       /* one byte into chunk 4 */
  CHECK_EQ(PASS, vmdi_data_read(t, huge, big + B, 0));
  CHECK_EQ(PASS, vmdi_data_read(t, huge, big - B, CB * B - 1));  /* 4 blocks short of 4 chunks, starting 1 byte before chunk 1 ends: 5 chunks */
  free(huge);

  /* the counters */
  uint64_t s[8];
  vmdi_data_stats(t, s);
  CHECK_EQ(6, s[0]);                       /* reads served (one of them at EOF) */
  CHECK_EQ(5, s[1]);                       /* writes served */
  CHECK_EQ(3 * B + 5 * B + 10 + 10 + sizeof(data) + 1, s[2]);
  CHECK_EQ(strlen(msg) + B + B + 1 + 10 + 10, s[3]);
  CHECK(s[4] > 1600000000000ULL && s[5] > 1600000000000ULL);
  CHECK_EQ(13, s[6]);                      /* passed */
  vmdi_data_retire(t);
  vmdi_data_stats(t, s);
  CHECK_EQ(0, s[7]);
  free(t);
  close(fd);
}

/* The ordering: a thread writes blocks K - SPAN + 1 .. K natively in a loop (256
 * KiB: each pwrite takes a while, and block K comes last), each time a byte of its
 * own (its sequence number); the main thread takes block K away. The file's block K read at once
 * after the change returns is that of the last write that succeeded, and stays so:
 * no write succeeds or lands later. */
#define K 70
#define SPAN 64
#define FILE_BLOCKS 128
static vmdi_data_t *ord_t;
static int ord_fd;
static int ord_stop;
static uint64_t ord_ok;     /* writes of K that succeeded */
static uint64_t ord_last;   /* the byte of the last of them */
static uint64_t ord_passed;  /* writes of K refused (PASS) */

static void *ord_writer (void *arg) {
  (void) arg;
  static char buf[SPAN * B];
  for (uint64_t seq = 1; !__atomic_load_n(&ord_stop, __ATOMIC_ACQUIRE); seq++) {
    memset(buf, (int) (1 + seq % 250), sizeof(buf));
    int n = vmdi_data_write(ord_t, buf, sizeof(buf), (K - SPAN + 1) * B);
    if (n == (int) sizeof(buf)) {
      __atomic_store_n(&ord_last, 1 + seq % 250, __ATOMIC_RELAXED);
      __atomic_add_fetch(&ord_ok, 1, __ATOMIC_RELEASE);
    } else {
      if (n != PASS) abort();
      __atomic_add_fetch(&ord_passed, 1, __ATOMIC_RELEASE);
    }
  }
  return NULL;
}

/* Native readers on blocks K - 1 .. K + 1 (the same stripe): they must not starve the changes. */
static void *ord_reader (void *arg) {
  (void) arg;
  char buf[3 * B];
  while (!__atomic_load_n(&ord_stop, __ATOMIC_ACQUIRE)) {
    int n = vmdi_data_read(ord_t, buf, sizeof(buf), (K - 1) * B);
    if (n != PASS && n != (int) sizeof(buf)) abort();
  }
  return NULL;
}

static void wait_for_writes (uint64_t more) {
  uint64_t want = __atomic_load_n(&ord_ok, __ATOMIC_ACQUIRE) + more;
  while (__atomic_load_n(&ord_ok, __ATOMIC_ACQUIRE) < want) sched_yield();
}

/* Block K's bytes, all equal; their value. */
static int block_byte (void) {
  char buf[B];
  CHECK_EQ(B, pread(ord_fd, buf, B, K * B));
  for (int i = 1; i < B; i++) if (buf[i] != buf[0]) CHECK_EQ(buf[0], buf[i]);
  return (unsigned char) buf[0];
}

/* Waits until the writer has been refused `more` times after now: each refusal
 * ends an iteration, so the counting of the success before it is done. */
static void wait_for_passes (uint64_t more) {
  uint64_t want = __atomic_load_n(&ord_passed, __ATOMIC_ACQUIRE) + more;
  while (__atomic_load_n(&ord_passed, __ATOMIC_ACQUIRE) < want) sched_yield();
}

/* After the block was taken away: the write count moves by at most the one write
 * that had finished in the library but was not yet counted when the change
 * returned; the block holds the last counted write's byte and keeps it while the
 * writer goes on trying. */
static void check_quiet (void) {
  int seen = block_byte();
  uint64_t ok = __atomic_load_n(&ord_ok, __ATOMIC_ACQUIRE);
  wait_for_passes(1);
  uint64_t later = __atomic_load_n(&ord_ok, __ATOMIC_ACQUIRE);
  CHECK(later <= ok + 1);
  CHECK_EQ(__atomic_load_n(&ord_last, __ATOMIC_RELAXED), seen);
  CHECK_EQ(seen, block_byte());
  wait_for_passes(5);
  CHECK_EQ(later, __atomic_load_n(&ord_ok, __ATOMIC_ACQUIRE));
  CHECK_EQ(seen, block_byte());
}

static void test_ordering (void) {
  ord_fd = new_file();
  ord_t = vmdi_data_new(3, ord_fd);
  static char zero[FILE_BLOCKS * B];
  CHECK_EQ(sizeof(zero), pwrite(ord_fd, zero, sizeof(zero), 0));
  vmdi_data_set_size(ord_t, sizeof(zero));
  CHECK_EQ(1, vmdi_data_set(ord_t, 0, FILE_BLOCKS, RW));
  pthread_t w, r[2];
  CHECK(pthread_create(&w, NULL, ord_writer, NULL) == 0);
  for (int i = 0; i < 2; i++) CHECK(pthread_create(&r[i], NULL, ord_reader, NULL) == 0);
  for (int round = 0; round < 120; round++) {
    CHECK_EQ(1, vmdi_data_set(ord_t, K, 1, RW));
    wait_for_writes(3);
    switch (round % 4) {
    case 0: CHECK_EQ(1, vmdi_data_set(ord_t, K, 1, NONE)); break;
    case 1: CHECK_EQ(1, vmdi_data_clamp(ord_t, 0, FILE_BLOCKS, READ)); break;
    case 2: CHECK_EQ(1, vmdi_data_set(ord_t, 0, CB, READ)); break;  /* a whole chunk: a sentinel */
    case 3: vmdi_data_writes_to_js(ord_t, 1); break;
    }
    check_quiet();
    if (round % 4 == 3) vmdi_data_writes_to_js(ord_t, 0);
    CHECK_EQ(1, vmdi_data_set(ord_t, 0, FILE_BLOCKS, RW));
  }
  /* and retire */
  wait_for_writes(3);
  vmdi_data_retire(ord_t);
  check_quiet();
  __atomic_store_n(&ord_stop, 1, __ATOMIC_RELEASE);
  pthread_join(w, NULL);
  for (int i = 0; i < 2; i++) pthread_join(r[i], NULL);
  CHECK(ord_passed > 0);
  free(ord_t);
  close(ord_fd);
}

/* A million random operations over a window across a second-level boundary,
 * against a shadow array of states; reads and writes on /dev/null must PASS
 * exactly when the shadow says so. */
#define W0 (REGION - 8 * CB)
#define WN (REGION + 8 * CB)   /* blocks in the window: [W0, W0 + WN) */
static uint64_t rnd_state = 88172645463325252ULL;
static uint64_t rnd (void) {
  rnd_state ^= rnd_state << 13;
  rnd_state ^= rnd_state >> 7;
  rnd_state ^= rnd_state << 17;
  return rnd_state;
}

static uint64_t rnd_len (void) {
  uint64_t p = rnd() % 1000;
  if (p < 850) return 1 + rnd() % 16;
  if (p < 970) return 1 + rnd() % (2 * CB);
  if (p < 999) return 1 + rnd() % (16 * CB);
  return 1 + rnd() % WN;
}

static void test_random (void) {
  int fd = open("/dev/null", O_RDWR);
  CHECK(fd >= 0);
  vmdi_data_t *t = vmdi_data_new(4, fd);
  uint8_t *shadow = calloc(WN, 1);
  CHECK(t != NULL && shadow != NULL);
  uint64_t size = (W0 + WN) * B;
  vmdi_data_set_size(t, size);
  int to_js = 0;
  char buf[3 * B];
  for (int op = 0; op < 1000000; op++) {
    uint64_t p = rnd() % 100;
    if (p < 70) {
      uint64_t len = rnd_len(), at = rnd() % WN;
      if (at + len > WN) len = WN - at;
      int v = (int) (rnd() % 3), clamp = p >= 45;
      CHECK_EQ(1, clamp ? vmdi_data_clamp(t, W0 + at, len, v) : vmdi_data_set(t, W0 + at, len, v));
      if (clamp) { for (uint64_t i = at; i < at + len; i++) if (shadow[i] > v) shadow[i] = (uint8_t) v; }
      else memset(shadow + at, v, len);
      /* around and inside the range */
      uint64_t probe[6] = { at, at + len - 1, at ? at - 1 : 0, at + len < WN ? at + len : at, at + rnd() % len, rnd() % WN };
      for (int i = 0; i < 6; i++) CHECK_EQ(shadow[probe[i]], vmdi_data_get(t, W0 + probe[i]));
    } else if (p < 98) {
      size_t len = 1 + rnd() % sizeof(buf);
      uint64_t at = rnd() % (WN * B - len);
      uint64_t b0 = at / B, b1 = (at + len - 1) / B;
      int lo = 2;
      for (uint64_t b = b0; b <= b1; b++) if (shadow[b] < lo) lo = shadow[b];
      off_t off = (off_t) (W0 * B + at);
      if (p < 85) {
        CHECK_EQ(lo >= READ ? 0 : PASS, vmdi_data_read(t, buf, len, off));  /* /dev/null: EOF at once */
      } else {
        int ok = lo == RW && !to_js && W0 * B + at + len <= size;
        CHECK_EQ(ok ? (int) len : PASS, vmdi_data_write(t, buf, len, off));
      }
    } else if (p < 99) {
      size = (W0 + rnd() % (WN + 1)) * B + rnd() % B;
      vmdi_data_set_size(t, size);
    } else {
      to_js = (int) (rnd() % 2);
      vmdi_data_writes_to_js(t, to_js);
    }
    if (op % 100000 == 99999) {
      for (uint64_t i = 0; i < WN; i++) CHECK_EQ(shadow[i], vmdi_data_get(t, W0 + i));
      /* and what the memory should be: a second level for each region with a
       * chunk not of the region's one state, a bitmap for each mixed chunk */
      uint64_t want = 0;
      for (uint64_t r = W0 / REGION; r <= (W0 + WN - 1) / REGION; r++) {
        uint64_t rs = r * REGION, re = rs + REGION;
        uint64_t lo = rs < W0 ? W0 : rs, hi = re > W0 + WN ? W0 + WN : re;  /* chunk-aligned */
        /* blocks outside the window are NONE */
        uint8_t one = lo > rs || hi < re ? NONE : shadow[lo - W0];
        int mixed_region = 0;
        for (uint64_t c = lo / CB; c < hi / CB; c++) {
          uint8_t s0 = shadow[c * CB - W0];
          int mixed = 0;
          for (uint64_t b = c * CB; b < (c + 1) * CB; b++) if (shadow[b - W0] != s0) { mixed = 1; break; }
          if (mixed) want += VMDI_DATA_CHUNK_BYTES;
          if (mixed || s0 != one) mixed_region = 1;
        }
        if (mixed_region) want += SECOND_BYTES;
      }
      CHECK_EQ(want, TABLE_BYTES(t));
    }
  }
  vmdi_data_retire(t);
  free(t);
  free(shadow);
  close(fd);
}

int main (void) {
  test_states();
  test_io();
  test_ordering();
  test_random();
  CHECKS_DONE();
}
