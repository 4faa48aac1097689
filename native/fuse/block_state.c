/*
 * block_state.c: the native data path's table of block states and its pread/pwrite
 * (see block_state.h for the layout, the locking and who calls what).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  /* pthread_rwlockattr_setkind_np */
#endif
#include "block_state.h"
#include "direct_path.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DIR_MASK (VMDI_DATA_SECOND - 1)
#define CHUNK_MASK (VMDI_DATA_CHUNK_BLOCKS - 1)
/* Blocks under one top entry: 2^20 (4 GiB). */
#define REGION_SHIFT (VMDI_DATA_CHUNK_SHIFT + VMDI_DATA_SECOND_SHIFT)
#define REGION_BLOCKS ((uint64_t) 1 << REGION_SHIFT)
#define SECOND_BYTES (VMDI_DATA_SECOND * sizeof(void *))

_Static_assert(VMDI_DATA_TOP_SHIFT + VMDI_DATA_SECOND_SHIFT + VMDI_DATA_CHUNK_SHIFT == 32, "the directory covers 2^32 blocks");

/* The sentinels of a chunk or top entry whose blocks all have one state (NULL: all NONE). */
static char all_read_tag, all_rw_tag;
#define ALL_READ ((void *) &all_read_tag)
#define ALL_RW ((void *) &all_rw_tag)

struct vmdi_data {
  pthread_rwlock_t lock[VMDI_DATA_STRIPES];
  void **top;          /* VMDI_DATA_TOP entries: NULL, a sentinel or a second level; NULL once retired */
  uint32_t image;
  int fd;
  int retired;         /* atomics: no native I/O any more */
  int failed;          /* memory ran short in a change: everything passes */
  int writes_js;       /* every write passes (a scan is running) */
  int reads_js;        /* every read passes (JavaScript learns what a booting VM reads) */
  uint64_t size;       /* the file's size as JavaScript knows it */
  uint64_t reads, writes, read_bytes, write_bytes, last_read, last_write, passed;
  uint64_t bytes;      /* bitmaps and second levels allocated */
};

static int is_uniform (void *p) {
  return p == NULL || p == ALL_READ || p == ALL_RW;
}

static int uniform_state (void *p) {
  return p == ALL_RW ? VMDI_NATIVE_RW : p == ALL_READ ? VMDI_NATIVE_READ : VMDI_NATIVE_NONE;
}

static void *sentinel (int state) {
  return state == VMDI_NATIVE_RW ? ALL_RW : state == VMDI_NATIVE_READ ? ALL_READ : NULL;
}

/* A bitmap byte whose four blocks all have `state`. */
static uint8_t pattern (int state) {
  return (uint8_t) (state * 0x55);
}

static void **load_top (vmdi_data_t *t) {
  return (void **) __atomic_load_n(&(t->top), __ATOMIC_ACQUIRE);
}

/* Chunk c's entry: NULL, a sentinel or its bitmap. */
static void *chunk_at (void **top, uint64_t c) {
  void *l1 = __atomic_load_n(&(top[c >> VMDI_DATA_SECOND_SHIFT]), __ATOMIC_ACQUIRE);
  if (is_uniform(l1)) return l1;
  return __atomic_load_n(&(((void **) l1)[c & DIR_MASK]), __ATOMIC_ACQUIRE);
}

static int bit_state (const uint8_t *bm, uint64_t b) {
  return (bm[b >> 2] >> ((b & 3) * 2)) & 3;
}

static void bit_set (uint8_t *bm, uint64_t b, int state) {
  unsigned shift = (unsigned) (b & 3) * 2;
  bm[b >> 2] = (uint8_t) ((bm[b >> 2] & ~(3u << shift)) | ((unsigned) state << shift));
}

/* Takes and releases every stripe's write lock once: no native I/O that began
 * before still runs when it returns. */
static void grace (vmdi_data_t *t) {
  for (int s = 0; s < VMDI_DATA_STRIPES; s++) {
    pthread_rwlock_wrlock(&(t->lock[s]));
    pthread_rwlock_unlock(&(t->lock[s]));
  }
}

/* Memory ran short in the middle of a change: the table answers PASS from now on
 * (blocks it did not reach may still hold states higher than JavaScript wants). */
static int fail (vmdi_data_t *t) {
  __atomic_store_n(&(t->failed), 1, __ATOMIC_RELEASE);
  grace(t);
  return 0;
}

vmdi_data_t *vmdi_data_new (uint32_t image, int fd) {
  vmdi_data_t *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  t->top = calloc(VMDI_DATA_TOP, sizeof(void *));
  if (t->top == NULL) { free(t); return NULL; }
  pthread_rwlockattr_t attr;
  pthread_rwlockattr_init(&attr);
  /* writers first: a stream of native readers cannot starve JavaScript's changes */
  pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  for (int s = 0; s < VMDI_DATA_STRIPES; s++) pthread_rwlock_init(&(t->lock[s]), &attr);
  pthread_rwlockattr_destroy(&attr);
  t->image = image;
  t->fd = fd;
  return t;
}

uint32_t vmdi_data_image (vmdi_data_t *t) { return t->image; }
int vmdi_data_fd (vmdi_data_t *t) { return t->fd; }

void vmdi_data_set_size (vmdi_data_t *t, uint64_t bytes) {
  __atomic_store_n(&(t->size), bytes, __ATOMIC_RELEASE);
}

/*
 * Blocks [b0, b1) of chunk c (entry `slot` of its second level) take `value`
 * (clamp: min(state, value)). Under the chunk's stripe write lock. 0 on ENOMEM.
 */
static int change_chunk (vmdi_data_t *t, void **slot, uint64_t b0, uint64_t b1, int value, int clamp) {
  void *e = __atomic_load_n(slot, __ATOMIC_RELAXED);
  int whole = b0 == 0 && b1 == VMDI_DATA_CHUNK_BLOCKS;
  uint8_t *bm;
  if (is_uniform(e)) {
    int s = uniform_state(e);
    int v = clamp && s < value ? s : value;
    if (v == s) return 1;
    if (whole) { __atomic_store_n(slot, sentinel(v), __ATOMIC_RELEASE); return 1; }
    bm = malloc(VMDI_DATA_CHUNK_BYTES);
    if (bm == NULL) return 0;
    __atomic_add_fetch(&(t->bytes), VMDI_DATA_CHUNK_BYTES, __ATOMIC_RELAXED);
    memset(bm, pattern(s), VMDI_DATA_CHUNK_BYTES);
    /* a uniform chunk clamped is every block of the range set to value */
    for (uint64_t b = b0; b < b1; b++) bit_set(bm, b, v);
  } else {
    bm = (uint8_t *) e;
    if (whole && !clamp) {
      __atomic_store_n(slot, sentinel(value), __ATOMIC_RELEASE);
      free(bm);
      __atomic_sub_fetch(&(t->bytes), VMDI_DATA_CHUNK_BYTES, __ATOMIC_RELAXED);
      return 1;
    }
    if (clamp) {
      for (uint64_t b = b0; b < b1; b++) if (bit_state(bm, b) > value) bit_set(bm, b, value);
    } else {
      uint64_t b = b0;
      for (; b < b1 && (b & 3) != 0; b++) bit_set(bm, b, value);
      if (b + 4 <= b1) {
        uint64_t full = (b1 - b) & ~(uint64_t) 3;
        memset(bm + (b >> 2), pattern(value), full >> 2);
        b += full;
      }
      for (; b < b1; b++) bit_set(bm, b, value);
    }
  }
  /* a bitmap whose blocks all have one state becomes that state's sentinel */
  int uniform = bm[0] == pattern(0) || bm[0] == pattern(1) || bm[0] == pattern(2);
  for (size_t i = 1; uniform && i < VMDI_DATA_CHUNK_BYTES; i++) uniform = bm[i] == bm[0];
  if (uniform) {
    __atomic_store_n(slot, sentinel(bm[0] / 0x55), __ATOMIC_RELEASE);
    free(bm);
    __atomic_sub_fetch(&(t->bytes), VMDI_DATA_CHUNK_BYTES, __ATOMIC_RELAXED);
  } else if (bm != e) {
    __atomic_store_n(slot, (void *) bm, __ATOMIC_RELEASE);
  }
  return 1;
}

/* Blocks [start, end) of top entry i's region take value (clamp: min). 0 on ENOMEM. */
/* Whether changing blocks [b0, b1) of chunk entry e would change a state. JavaScript is
 * the only writer, so it may ask without a lock: a change that changes nothing needs
 * no write lock (no native I/O in flight can depend on it), and a JavaScript path that
 * lowers blocks already low (most watches) then never waits for native I/O. */
static int chunk_would_change (void *e, uint64_t b0, uint64_t b1, int value, int clamp) {
  if (is_uniform(e)) {
    int s = uniform_state(e);
    return clamp ? s > value : s != value;
  }
  const uint8_t *bm = (const uint8_t *) e;
  for (uint64_t b = b0; b < b1; b++) {
    int s = bit_state(bm, b);
    if (clamp ? s > value : s != value) return 1;
  }
  return 0;
}

static int change_region (vmdi_data_t *t, uint64_t i, uint64_t start, uint64_t end, int value, int clamp) {
  void **top = t->top;
  void *l1 = __atomic_load_n(&(top[i]), __ATOMIC_RELAXED);
  if (is_uniform(l1)) {
    int s = uniform_state(l1);
    if ((clamp && s <= value) || (!clamp && s == value)) return 1;
    /* one chunk at a time under its own stripe's lock: the region gets a second
     * level of sentinels first (the same states, so no lock is needed to publish it) */
    void **l2 = malloc(SECOND_BYTES);
    if (l2 == NULL) return 0;
    __atomic_add_fetch(&(t->bytes), SECOND_BYTES, __ATOMIC_RELAXED);
    for (int k = 0; k < VMDI_DATA_SECOND; k++) l2[k] = l1;
    __atomic_store_n(&(top[i]), (void *) l2, __ATOMIC_RELEASE);
    l1 = l2;
  }
  void **l2 = (void **) l1;
  uint64_t c0 = start >> VMDI_DATA_CHUNK_SHIFT, c1 = (end - 1) >> VMDI_DATA_CHUNK_SHIFT;
  /* stripe by stripe, each stripe's chunks under one hold of its write lock */
  for (uint64_t s = 0; s < VMDI_DATA_STRIPES; s++) {
    uint64_t c = c0 + ((s + VMDI_DATA_STRIPES - c0 % VMDI_DATA_STRIPES) % VMDI_DATA_STRIPES);
    if (c > c1) continue;
    int needed = 0;
    for (uint64_t k = c; k <= c1 && !needed; k += VMDI_DATA_STRIPES) {
      uint64_t ks = k << VMDI_DATA_CHUNK_SHIFT;
      needed = chunk_would_change(__atomic_load_n(&(l2[k & DIR_MASK]), __ATOMIC_RELAXED), start > ks ? start - ks : 0, end < ks + VMDI_DATA_CHUNK_BLOCKS ? end - ks : VMDI_DATA_CHUNK_BLOCKS, value, clamp);
    }
    if (!needed) continue;
    pthread_rwlock_wrlock(&(t->lock[s]));
    for (; c <= c1; c += VMDI_DATA_STRIPES) {
      uint64_t cs = c << VMDI_DATA_CHUNK_SHIFT;
      uint64_t b0 = start > cs ? start - cs : 0;
      uint64_t b1 = end < cs + VMDI_DATA_CHUNK_BLOCKS ? end - cs : VMDI_DATA_CHUNK_BLOCKS;
      if (!change_chunk(t, &(l2[c & DIR_MASK]), b0, b1, value, clamp)) {
        pthread_rwlock_unlock(&(t->lock[s]));
        return 0;
      }
    }
    pthread_rwlock_unlock(&(t->lock[s]));
  }
  /* a second level of one sentinel becomes that sentinel; it is freed once no
   * reader that loaded it can still be using it */
  void *first = l2[0];
  if (!is_uniform(first)) return 1;
  for (int k = 1; k < VMDI_DATA_SECOND; k++) if (l2[k] != first) return 1;
  __atomic_store_n(&(top[i]), first, __ATOMIC_RELEASE);
  grace(t);
  free(l2);
  __atomic_sub_fetch(&(t->bytes), SECOND_BYTES, __ATOMIC_RELAXED);
  return 1;
}

static int change (vmdi_data_t *t, uint64_t start, uint64_t count, int value, int clamp) {
  if (value < VMDI_NATIVE_NONE || value > VMDI_NATIVE_RW) return 0;
  if (start >= VMDI_DATA_BLOCK_LIMIT || count > VMDI_DATA_BLOCK_LIMIT - start) return 0;
  if (__atomic_load_n(&(t->retired), __ATOMIC_ACQUIRE) || __atomic_load_n(&(t->failed), __ATOMIC_ACQUIRE)) return 0;
  uint64_t end = start + count;
  for (uint64_t i = start >> REGION_SHIFT; count > 0 && i <= (end - 1) >> REGION_SHIFT; i++) {
    uint64_t rs = i << REGION_SHIFT, re = rs + REGION_BLOCKS;
    if (!change_region(t, i, start > rs ? start : rs, end < re ? end : re, value, clamp)) return fail(t);
  }
  return 1;
}

int vmdi_data_set (vmdi_data_t *t, uint64_t start, uint64_t count, int state) {
  return change(t, start, count, state, 0);
}

int vmdi_data_clamp (vmdi_data_t *t, uint64_t start, uint64_t count, int max) {
  return change(t, start, count, max, 1);
}

int vmdi_data_get (vmdi_data_t *t, uint64_t block) {
  if (block >= VMDI_DATA_BLOCK_LIMIT || __atomic_load_n(&(t->retired), __ATOMIC_ACQUIRE)) return VMDI_NATIVE_NONE;
  void **top = load_top(t);
  if (top == NULL) return VMDI_NATIVE_NONE;
  void *e = chunk_at(top, block >> VMDI_DATA_CHUNK_SHIFT);
  return is_uniform(e) ? uniform_state(e) : bit_state((const uint8_t *) e, block & CHUNK_MASK);
}

void vmdi_data_reads_to_js (vmdi_data_t *t, int on) {
  __atomic_store_n(&(t->reads_js), on ? 1 : 0, __ATOMIC_RELEASE);
}

void vmdi_data_writes_to_js (vmdi_data_t *t, int on) {
  __atomic_store_n(&(t->writes_js), on ? 1 : 0, __ATOMIC_RELEASE);
  grace(t);
}

void vmdi_data_retire (vmdi_data_t *t) {
  if (__atomic_exchange_n(&(t->retired), 1, __ATOMIC_ACQ_REL)) return;
  grace(t);
  void **top = load_top(t);
  __atomic_store_n(&(t->top), NULL, __ATOMIC_RELEASE);
  for (int i = 0; i < VMDI_DATA_TOP; i++) {
    if (is_uniform(top[i])) continue;
    void **l2 = (void **) top[i];
    for (int k = 0; k < VMDI_DATA_SECOND; k++) {
      if (is_uniform(l2[k])) continue;
      free(l2[k]);
      __atomic_sub_fetch(&(t->bytes), VMDI_DATA_CHUNK_BYTES, __ATOMIC_RELAXED);
    }
    free(l2);
    __atomic_sub_fetch(&(t->bytes), SECOND_BYTES, __ATOMIC_RELAXED);
  }
  free(top);
}

static int pass (vmdi_data_t *t) {
  __atomic_add_fetch(&(t->passed), 1, __ATOMIC_RELAXED);
  return VMDI_DATA_PASS;
}

/* The stripes of blocks [first, last], increasing, into out; how many, or -1 when
 * more than VMDI_DATA_MAX_STRIPES or past the table. */
static int stripes_of (uint64_t first, uint64_t last, int out[VMDI_DATA_MAX_STRIPES]) {
  if (last >= VMDI_DATA_BLOCK_LIMIT) return -1;
  uint64_t c0 = first >> VMDI_DATA_CHUNK_SHIFT, c1 = last >> VMDI_DATA_CHUNK_SHIFT;
  /* consecutive chunks, fewer than VMDI_DATA_STRIPES: each its own stripe */
  if (c1 - c0 + 1 > VMDI_DATA_MAX_STRIPES) return -1;
  int n = 0;
  for (uint64_t c = c0; c <= c1; c++) {
    int s = (int) (c % VMDI_DATA_STRIPES), k = n++;
    while (k > 0 && out[k - 1] > s) { out[k] = out[k - 1]; k--; }
    out[k] = s;
  }
  return n;
}

/* Read-locks the stripes; 0 (none held) if one cannot be taken. */
static int lock_stripes (vmdi_data_t *t, const int *st, int n) {
  for (int i = 0; i < n; i++) {
    if (pthread_rwlock_rdlock(&(t->lock[st[i]])) != 0) {
      while (i-- > 0) pthread_rwlock_unlock(&(t->lock[st[i]]));
      return 0;
    }
  }
  return 1;
}

static void unlock_stripes (vmdi_data_t *t, const int *st, int n) {
  for (int i = n - 1; i >= 0; i--) pthread_rwlock_unlock(&(t->lock[st[i]]));
}

/* Every block of [first, last] is at least `min`. Under the stripes' read locks. */
static int states_at_least (vmdi_data_t *t, uint64_t first, uint64_t last, int min) {
  void **top = load_top(t);
  if (top == NULL) return 0;
  for (uint64_t c = first >> VMDI_DATA_CHUNK_SHIFT; c <= last >> VMDI_DATA_CHUNK_SHIFT; c++) {
    void *e = chunk_at(top, c);
    if (is_uniform(e)) {
      if (uniform_state(e) < min) return 0;
      continue;
    }
    uint64_t cs = c << VMDI_DATA_CHUNK_SHIFT;
    uint64_t b0 = first > cs ? first - cs : 0;
    uint64_t b1 = last < cs + CHUNK_MASK ? last - cs : CHUNK_MASK;
    for (uint64_t b = b0; b <= b1; b++) if (bit_state((const uint8_t *) e, b) < min) return 0;
  }
  return 1;
}

/* The locks for a request of len bytes at offset, with the flags and states
 * checked; the stripe count, or 0 when it is to pass (nothing held). */
static int enter (vmdi_data_t *t, size_t len, off_t offset, int is_write, int st[VMDI_DATA_MAX_STRIPES]) {
  if (len == 0 || len > INT_MAX || offset < 0) return 0;
  uint64_t first = (uint64_t) offset >> VMDI_BLOCK_SHIFT;
  uint64_t last = ((uint64_t) offset + len - 1) >> VMDI_BLOCK_SHIFT;
  int n = stripes_of(first, last, st);
  if (n < 0 || !lock_stripes(t, st, n)) return 0;
  int ok = !__atomic_load_n(&(t->retired), __ATOMIC_ACQUIRE) && !__atomic_load_n(&(t->failed), __ATOMIC_ACQUIRE);
  if (ok && !is_write) ok = !__atomic_load_n(&(t->reads_js), __ATOMIC_ACQUIRE);
  if (ok && is_write) {
    ok = !__atomic_load_n(&(t->writes_js), __ATOMIC_ACQUIRE) &&
      (uint64_t) offset + len <= __atomic_load_n(&(t->size), __ATOMIC_ACQUIRE);
  }
  if (ok) ok = states_at_least(t, first, last, is_write ? VMDI_NATIVE_RW : VMDI_NATIVE_READ);
  if (!ok) { unlock_stripes(t, st, n); return 0; }
  return n;
}

int vmdi_data_read (vmdi_data_t *t, char *buf, size_t len, off_t offset) {
  int st[VMDI_DATA_MAX_STRIPES];
  int n = enter(t, len, offset, 0, st);
  if (n == 0) return pass(t);
  size_t done = 0;
  int err = 0;
  while (done < len) {
    ssize_t r = pread(t->fd, buf + done, len - done, offset + done);
    if (r < 0) { if (errno == EINTR) continue; err = errno; break; }
    if (r == 0) break;
    done += r;
  }
  unlock_stripes(t, st, n);
  __atomic_add_fetch(&(t->reads), 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&(t->read_bytes), done, __ATOMIC_RELAXED);
  __atomic_store_n(&(t->last_read), vmdi_now_ms(), __ATOMIC_RELAXED);
  return done == 0 && err ? -err : (int) done;
}

int vmdi_data_write (vmdi_data_t *t, const char *buf, size_t len, off_t offset) {
  int st[VMDI_DATA_MAX_STRIPES];
  int n = enter(t, len, offset, 1, st);
  if (n == 0) return pass(t);
  vmdi_writes_begin();
  size_t done = 0;
  int err = 0;
  while (done < len) {
    ssize_t w = pwrite(t->fd, buf + done, len - done, offset + done);
    if (w < 0) { if (errno == EINTR) continue; err = errno; break; }
    done += w;
  }
  vmdi_writes_end();
  unlock_stripes(t, st, n);
  __atomic_add_fetch(&(t->writes), 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&(t->write_bytes), done, __ATOMIC_RELAXED);
  __atomic_store_n(&(t->last_write), vmdi_now_ms(), __ATOMIC_RELAXED);
  return done == 0 && err ? -err : (int) done;
}

void vmdi_data_stats (vmdi_data_t *t, uint64_t out[8]) {
  out[0] = __atomic_load_n(&(t->reads), __ATOMIC_RELAXED);
  out[1] = __atomic_load_n(&(t->writes), __ATOMIC_RELAXED);
  out[2] = __atomic_load_n(&(t->read_bytes), __ATOMIC_RELAXED);
  out[3] = __atomic_load_n(&(t->write_bytes), __ATOMIC_RELAXED);
  out[4] = __atomic_load_n(&(t->last_read), __ATOMIC_RELAXED);
  out[5] = __atomic_load_n(&(t->last_write), __ATOMIC_RELAXED);
  out[6] = __atomic_load_n(&(t->passed), __ATOMIC_RELAXED);
  out[7] = __atomic_load_n(&(t->bytes), __ATOMIC_RELAXED);
}
