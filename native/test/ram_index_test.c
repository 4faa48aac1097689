/*
 * ram_index_test.c: native/fuse/ram_index.c on its own (no FUSE, no Node): store,
 * lookup, drop (eviction), slot reuse, reads within and across blocks, reads the
 * file size or a miss sends to JavaScript, the ring of served keys and its
 * overflow, and a long random run of stores and drops against a shadow map (the
 * hash table's backward-shift deletion). Built and run by test/native/c.test.ts.
 */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "ram_index.h"
#include "check.h"

#define KEY(image, block) (((uint64_t) (image) << VMDI_KEY_IMAGE_SHIFT) | (uint64_t) (block))

/* A block that says which key and generation it holds. */
static void pattern (char *b, uint64_t key, uint32_t gen) {
  for (int i = 0; i < VMDI_BLOCK_SIZE; i++) b[i] = (char) ((key * 31 + gen * 7 + (uint64_t) i * 13) & 0xff);
  memcpy(b, &key, 8);
  memcpy(b + 8, &gen, 4);
}

static int holds (const char *b, uint64_t key, uint32_t gen) {
  char want[VMDI_BLOCK_SIZE];
  pattern(want, key, gen);
  return memcmp(b, want, VMDI_BLOCK_SIZE) == 0;
}

/* An HDD file of `blocks` blocks: only its size matters to the index. */
static int file_of (uint64_t blocks) {
  FILE *f = tmpfile();
  CHECK(f != NULL);
  int fd = dup(fileno(f));
  fclose(f);
  CHECK(ftruncate(fd, (off_t) (blocks * VMDI_BLOCK_SIZE)) == 0);
  return fd;
}

static char *new_slabs (vmdi_ram_t *r, uint32_t capacity) {
  char *mem = malloc((size_t) capacity * VMDI_BLOCK_SIZE);
  CHECK(mem != NULL);
  for (uint32_t i = 0; i * VMDI_SLAB_BLOCKS < capacity; i++) CHECK_EQ(1, vmdi_ram_slab(r, i, mem + (size_t) i * VMDI_SLAB_BLOCKS * VMDI_BLOCK_SIZE));
  return mem;
}

static void test_limits (void) {
  CHECK(vmdi_ram_new(0) == NULL);
  vmdi_ram_t *r = vmdi_ram_new(100);
  CHECK(r != NULL);
  CHECK_EQ(1023, r->mask);  /* a power of two, at least twice the capacity, at least 1024 */
  CHECK_EQ(VMDI_RAM_RING_SLOTS - 1, r->ring_mask);
  char block[VMDI_BLOCK_SIZE];
  pattern(block, 1, 0);
  /* no slab yet: refused, not indexed */
  CHECK_EQ(0, vmdi_ram_store(r, 0, 1, block, sizeof(block), 0, 1));
  CHECK_EQ(-1, vmdi_ram_slot_of(r, 1));
  CHECK_EQ(0, vmdi_ram_slab(r, 1, block));  /* 100 slots: one slab, index 0 only */
  char *mem = new_slabs(r, 100);
  CHECK_EQ(0, vmdi_ram_store(r, 100, 1, block, sizeof(block), 0, 1));  /* slot out of range */
  CHECK_EQ(0, vmdi_ram_drop(r, 100));
  /* a source too short for a block at `at`: refused, and the slot loses its key */
  CHECK_EQ(1, vmdi_ram_store(r, 3, 9, block, sizeof(block), 0, 1));
  CHECK_EQ(3, vmdi_ram_slot_of(r, 9));
  CHECK_EQ(0, vmdi_ram_store(r, 3, 9, block, sizeof(block), 1, 1));
  CHECK_EQ(-1, vmdi_ram_slot_of(r, 9));
  /* src[at..at+4096) is what is copied */
  char two[2 * VMDI_BLOCK_SIZE];
  pattern(two + VMDI_BLOCK_SIZE, 9, 4);
  CHECK_EQ(1, vmdi_ram_store(r, 3, 9, two, sizeof(two), VMDI_BLOCK_SIZE, 1));
  CHECK(holds(mem + 3 * VMDI_BLOCK_SIZE, 9, 4));
  vmdi_ram_free(r);
  free(mem);
}

static void test_reads (void) {
  const uint32_t cap = 2 * VMDI_SLAB_BLOCKS + 10;  /* three slabs, the last partial */
  vmdi_ram_t *r = vmdi_ram_new(cap);
  char *mem = new_slabs(r, cap);
  int fd = file_of(1000);
  char block[VMDI_BLOCK_SIZE];
  /* image 7, blocks 0..99 in slots spread over the three slabs */
  for (uint32_t b = 0; b < 100; b++) {
    uint32_t slot = (b * 83) % cap;
    pattern(block, KEY(7, b), 1);
    CHECK_EQ(1, vmdi_ram_store(r, slot, KEY(7, b), block, sizeof(block), 0, 1));
    CHECK_EQ(slot, vmdi_ram_slot_of(r, KEY(7, b)));
  }
  CHECK_EQ(-1, vmdi_ram_slot_of(r, KEY(6, 0)));  /* another image's block 0 */
  CHECK_EQ(-1, vmdi_ram_slot_of(r, KEY(7, 100)));

  /* one whole block */
  char buf[VMDI_RAM_MAX_SPAN * VMDI_BLOCK_SIZE + VMDI_BLOCK_SIZE];
  CHECK_EQ(VMDI_BLOCK_SIZE, vmdi_ram_read(r, 7, fd, buf, VMDI_BLOCK_SIZE, 5 * VMDI_BLOCK_SIZE));
  CHECK(holds(buf, KEY(7, 5), 1));
  /* 100 bytes across the end of block 10 and the start of block 11 */
  char want[2 * VMDI_BLOCK_SIZE];
  pattern(want, KEY(7, 10), 1);
  pattern(want + VMDI_BLOCK_SIZE, KEY(7, 11), 1);
  CHECK_EQ(100, vmdi_ram_read(r, 7, fd, buf, 100, 11 * VMDI_BLOCK_SIZE - 40));
  CHECK(memcmp(buf, want + VMDI_BLOCK_SIZE - 40, 100) == 0);
  /* the most blocks one read may span, unaligned: 64 blocks touched */
  size_t len = (VMDI_RAM_MAX_SPAN - 1) * VMDI_BLOCK_SIZE + 1;
  CHECK_EQ((long long) len, vmdi_ram_read(r, 7, fd, buf, len, 20 * VMDI_BLOCK_SIZE + VMDI_BLOCK_SIZE - 1));
  for (int i = 0; i < 2; i++) pattern(want + i * VMDI_BLOCK_SIZE, KEY(7, 20 + i), 1);
  CHECK(memcmp(buf, want + VMDI_BLOCK_SIZE - 1, 1) == 0 && memcmp(buf + 1, want + VMDI_BLOCK_SIZE, VMDI_BLOCK_SIZE) == 0);
  uint64_t s[4];
  vmdi_ram_stats(r, s);
  CHECK_EQ(1 + 2 + VMDI_RAM_MAX_SPAN, s[0]);  /* blocks served */
  CHECK_EQ(3, s[1]);                          /* reads answered */
  CHECK_EQ(0, s[2]);

  /* sent to JavaScript: one block more than the span (not counted), a miss, past
   * the file's end, an empty read, a negative offset, another image */
  CHECK_EQ(-1, vmdi_ram_read(r, 7, fd, buf, VMDI_RAM_MAX_SPAN * VMDI_BLOCK_SIZE + 1, 0));
  vmdi_ram_stats(r, s);
  CHECK_EQ(0, s[2]);
  CHECK_EQ(-1, vmdi_ram_read(r, 7, fd, buf, 2 * VMDI_BLOCK_SIZE, 99 * VMDI_BLOCK_SIZE));  /* block 100 missing */
  int small = file_of(50);
  CHECK_EQ(-1, vmdi_ram_read(r, 7, small, buf, 2, 50 * VMDI_BLOCK_SIZE - 1));           /* ends past the end */
  CHECK_EQ(VMDI_BLOCK_SIZE, vmdi_ram_read(r, 7, small, buf, VMDI_BLOCK_SIZE, 49 * VMDI_BLOCK_SIZE));  /* ends at it */
  CHECK_EQ(-1, vmdi_ram_read(r, 7, -1, buf, 1, 0));                                       /* fstat fails */
  CHECK_EQ(-1, vmdi_ram_read(r, 7, fd, buf, 0, 0));
  CHECK_EQ(-1, vmdi_ram_read(r, 7, fd, buf, 1, -1));
  CHECK_EQ(-1, vmdi_ram_read(r, 6, fd, buf, 1, 0));
  vmdi_ram_stats(r, s);
  CHECK_EQ(4, s[2]);
  CHECK_EQ(4, s[1]);

  /* drop (eviction): gone from the index, the read goes to JavaScript */
  CHECK_EQ(1, vmdi_ram_drop(r, vmdi_ram_slot_of(r, KEY(7, 5))));
  CHECK_EQ(-1, vmdi_ram_slot_of(r, KEY(7, 5)));
  CHECK_EQ(-1, vmdi_ram_read(r, 7, fd, buf, 1, 5 * VMDI_BLOCK_SIZE));
  CHECK_EQ(1, vmdi_ram_drop(r, vmdi_ram_slot_of(r, KEY(7, 6)) + 0));
  CHECK_EQ(1, vmdi_ram_drop(r, 0));  /* dropping a slot twice or an empty one is harmless */

  /* slot reuse: block 30's slot now holds image 9's block 30; its old key is gone */
  uint32_t slot30 = (uint32_t) vmdi_ram_slot_of(r, KEY(7, 30));
  pattern(block, KEY(9, 30), 2);
  CHECK_EQ(1, vmdi_ram_store(r, slot30, KEY(9, 30), block, sizeof(block), 0, 1));
  CHECK_EQ(-1, vmdi_ram_slot_of(r, KEY(7, 30)));
  CHECK_EQ(slot30, vmdi_ram_slot_of(r, KEY(9, 30)));
  CHECK_EQ(VMDI_BLOCK_SIZE, vmdi_ram_read(r, 9, fd, buf, VMDI_BLOCK_SIZE, 30 * VMDI_BLOCK_SIZE));
  CHECK(holds(buf, KEY(9, 30), 2));
  /* the same key stored into another slot: the new slot serves it, the old one not */
  uint32_t other = cap - 1;
  pattern(block, KEY(9, 30), 3);
  CHECK_EQ(1, vmdi_ram_store(r, other, KEY(9, 30), block, sizeof(block), 0, 1));
  CHECK_EQ(other, vmdi_ram_slot_of(r, KEY(9, 30)));
  CHECK_EQ(VMDI_BLOCK_SIZE, vmdi_ram_read(r, 9, fd, buf, VMDI_BLOCK_SIZE, 30 * VMDI_BLOCK_SIZE));
  CHECK(holds(buf, KEY(9, 30), 3));
  /* not servable: the bytes change, the key is not indexed (JavaScript serves it) */
  pattern(block, KEY(9, 30), 4);
  CHECK_EQ(1, vmdi_ram_store(r, other, KEY(9, 30), block, sizeof(block), 0, 0));
  CHECK_EQ(-1, vmdi_ram_slot_of(r, KEY(9, 30)));
  CHECK(holds(mem + (size_t) other * VMDI_BLOCK_SIZE, KEY(9, 30), 4));

  /* the ring: every block served, in order, as key = image << 32 | block */
  double keys[200];
  uint32_t n = vmdi_ram_drain(r, keys, 200);
  CHECK_EQ(1 + 2 + VMDI_RAM_MAX_SPAN + 1 + 1 + 1, n);
  CHECK(keys[0] == (double) KEY(7, 5));
  CHECK(keys[1] == (double) KEY(7, 10) && keys[2] == (double) KEY(7, 11));
  for (uint32_t i = 0; i < VMDI_RAM_MAX_SPAN; i++) CHECK(keys[3 + i] == (double) KEY(7, 20 + i));
  CHECK(keys[n - 3] == (double) KEY(7, 49));
  CHECK(keys[n - 1] == (double) KEY(9, 30));
  CHECK_EQ(0, vmdi_ram_drain(r, keys, 200));
  close(fd);
  close(small);
  vmdi_ram_free(r);
  free(mem);
}

/* The ring holds VMDI_RAM_RING_SLOTS keys; more are counted as lost, not written. */
static void test_ring_overflow (void) {
  vmdi_ram_t *r = vmdi_ram_new(VMDI_RAM_MAX_SPAN);
  char *mem = new_slabs(r, VMDI_RAM_MAX_SPAN);
  char block[VMDI_BLOCK_SIZE];
  uint64_t top = VMDI_IMAGE_ID_LIMIT - 1;  /* the largest id */
  /* its last block's key is still exact as a double (JavaScript's number) */
  CHECK((uint64_t) (double) KEY(top, 0xFFFFFFFFu) == KEY(top, 0xFFFFFFFFu));
  CHECK_EQ(1, vmdi_ram_store(r, 0, KEY(top, 0xFFFFFFFFu), block, sizeof(block), 0, 1));
  CHECK_EQ(0, vmdi_ram_slot_of(r, KEY(top, 0xFFFFFFFFu)));
  CHECK_EQ(-1, vmdi_ram_slot_of(r, KEY(top - 1, 0xFFFFFFFFu)));
  const uint32_t first = 1000;
  for (uint32_t b = 0; b < VMDI_RAM_MAX_SPAN; b++) {
    pattern(block, KEY(top, first + b), 0);
    CHECK_EQ(1, vmdi_ram_store(r, b, KEY(top, first + b), block, sizeof(block), 0, 1));
  }
  int fd = file_of(first + VMDI_RAM_MAX_SPAN);
  char *buf = malloc(VMDI_RAM_MAX_SPAN * VMDI_BLOCK_SIZE);
  off_t at = (off_t) first * VMDI_BLOCK_SIZE;
  uint32_t reads = VMDI_RAM_RING_SLOTS / VMDI_RAM_MAX_SPAN + 3;  /* 3 reads too many */
  for (uint32_t i = 0; i < reads; i++) CHECK_EQ(VMDI_RAM_MAX_SPAN * VMDI_BLOCK_SIZE, vmdi_ram_read(r, (uint32_t) top, fd, buf, VMDI_RAM_MAX_SPAN * VMDI_BLOCK_SIZE, at));
  CHECK(holds(buf + (VMDI_RAM_MAX_SPAN - 1) * VMDI_BLOCK_SIZE, KEY(top, first + VMDI_RAM_MAX_SPAN - 1), 0));
  uint64_t s[4];
  vmdi_ram_stats(r, s);
  CHECK_EQ((uint64_t) reads * VMDI_RAM_MAX_SPAN, s[0]);
  CHECK_EQ(3 * VMDI_RAM_MAX_SPAN, s[3]);  /* lost */
  /* drained in pieces: a short buffer takes what fits, the rest waits */
  double *keys = malloc(sizeof(double) * VMDI_RAM_RING_SLOTS);
  CHECK_EQ(10, vmdi_ram_drain(r, keys, 10));
  CHECK((uint64_t) keys[0] == KEY(top, first));
  CHECK((uint64_t) keys[9] == KEY(top, first + 9));
  CHECK_EQ(VMDI_RAM_RING_SLOTS - 10, vmdi_ram_drain(r, keys, VMDI_RAM_RING_SLOTS));
  CHECK((uint64_t) keys[VMDI_RAM_RING_SLOTS - 11] == KEY(top, first + VMDI_RAM_MAX_SPAN - 1));
  /* once drained, there is room again */
  CHECK_EQ(VMDI_BLOCK_SIZE, vmdi_ram_read(r, (uint32_t) top, fd, buf, VMDI_BLOCK_SIZE, at));
  CHECK_EQ(1, vmdi_ram_drain(r, keys, 10));
  vmdi_ram_stats(r, s);
  CHECK_EQ(3 * VMDI_RAM_MAX_SPAN, s[3]);
  free(keys);
  free(buf);
  close(fd);
  vmdi_ram_free(r);
  free(mem);
}

/* Random stores (servable or not) and drops over a small table with many
 * collisions, checked against a shadow of which slot holds which key. */
static uint64_t rng = 88172645463325252ULL;
static uint64_t next_rand (void) {
  rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
  return rng;
}

static void test_random (void) {
  const uint32_t cap = 600;  /* table of 2048 entries, up to 600 used */
  const uint32_t keys = 900;
  vmdi_ram_t *r = vmdi_ram_new(cap);
  CHECK_EQ(2047, r->mask);
  char *mem = new_slabs(r, cap);
  int64_t slot_of_key[900];
  uint64_t key_of_slot[600];  /* key + 1, 0 = none */
  for (uint32_t i = 0; i < keys; i++) slot_of_key[i] = -1;
  memset(key_of_slot, 0, sizeof(key_of_slot));
  char block[VMDI_BLOCK_SIZE];
  memset(block, 0, sizeof(block));
  for (int step = 0; step < 200000; step++) {
    uint32_t slot = (uint32_t) (next_rand() % cap);
    uint32_t k = (uint32_t) (next_rand() % keys);
    uint64_t key = KEY(k % 3, k * 977);  /* three images */
    int op = (int) (next_rand() % 4);
    if (key_of_slot[slot]) { slot_of_key[key_of_slot[slot] - 1] = -1; key_of_slot[slot] = 0; }
    if (op == 0) {
      CHECK_EQ(1, vmdi_ram_drop(r, slot));
    } else {
      int servable = op != 1;
      CHECK_EQ(1, vmdi_ram_store(r, slot, key, block, sizeof(block), 0, servable));
      if (servable) {
        if (slot_of_key[k] >= 0) key_of_slot[slot_of_key[k]] = 0;
        slot_of_key[k] = slot;
        key_of_slot[slot] = k + 1;
      }
    }
    if (step % 997 == 0 || step > 199000) {
      for (uint32_t i = 0; i < keys; i++) CHECK_EQ(slot_of_key[i], vmdi_ram_slot_of(r, KEY(i % 3, i * 977)));
    }
  }
  /* the table is consistent: every non-empty entry is a slot indexed under a key
   * that finds it */
  uint32_t used = 0;
  for (uint32_t i = 0; i <= r->mask; i++) {
    if (r->table[i] == 0) continue;
    used++;
    uint32_t slot = r->table[i] - 1;
    CHECK(r->slot_key[slot] != 0);
    CHECK_EQ(slot, vmdi_ram_slot_of(r, r->slot_key[slot] - 1));
  }
  uint32_t indexed = 0;
  for (uint32_t i = 0; i < keys; i++) if (slot_of_key[i] >= 0) indexed++;
  CHECK_EQ(indexed, used);
  vmdi_ram_free(r);
  free(mem);
}

int main (void) {
  test_limits();
  test_reads();
  test_ring_overflow();
  test_random();
  CHECKS_DONE();
}
