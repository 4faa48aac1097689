/*
 * ram_index.c: the native index of the RAM tier (see ram_index.h for who calls
 * what and the locking). A hash table from key to slot, open addressing with
 * linear probing and backward-shift deletion (no tombstones, so probe chains stay
 * short however many stores and drops run), at most half full.
 */
#include "ram_index.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static inline uint32_t home_of (vmdi_ram_t *r, uint64_t key) {
  return (uint32_t) ((key * 0x9E3779B97F4A7C15ULL) >> 32) & r->mask;
}

/* Under r->mut. */
static int64_t lookup (vmdi_ram_t *r, uint64_t key) {
  uint32_t i = home_of(r, key);
  for (;;) {
    uint32_t e = r->table[i];
    if (e == 0) return -1;
    if (r->slot_key[e - 1] == key + 1) return e - 1;
    i = (i + 1) & r->mask;
  }
}

/* Under r->mut. */
static void unindex (vmdi_ram_t *r, uint32_t slot) {
  if (r->slot_key[slot] == 0) return;
  uint32_t i = home_of(r, r->slot_key[slot] - 1);
  while (r->table[i] != slot + 1) i = (i + 1) & r->mask;
  // Backward shift: each later entry of the chain whose home is not in (i, j]
  // moves into the hole, which moves on to where it was.
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & r->mask;
    uint32_t e = r->table[j];
    if (e == 0) break;
    uint32_t k = home_of(r, r->slot_key[e - 1] - 1);
    int stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
    if (stays) continue;
    r->table[i] = e;
    i = j;
  }
  r->table[i] = 0;
  r->slot_key[slot] = 0;
}

/* Under r->mut. */
static void index_slot (vmdi_ram_t *r, uint32_t slot, uint64_t key) {
  int64_t other = lookup(r, key);
  if (other >= 0) unindex(r, (uint32_t) other);
  uint32_t i = home_of(r, key);
  while (r->table[i] != 0) i = (i + 1) & r->mask;
  r->table[i] = slot + 1;
  r->slot_key[slot] = key + 1;
}

static inline char *block_of (vmdi_ram_t *r, uint32_t slot) {
  return r->slabs[slot / VMDI_SLAB_BLOCKS] + (size_t) (slot % VMDI_SLAB_BLOCKS) * VMDI_BLOCK_SIZE;
}

vmdi_ram_t *vmdi_ram_new (uint32_t capacity) {
  if (capacity == 0) return NULL;
  vmdi_ram_t *r = calloc(1, sizeof(vmdi_ram_t));
  if (r == NULL) return NULL;
  uint32_t size = 1024;
  while (size < capacity * 2) size <<= 1;
  r->capacity = capacity;
  r->mask = size - 1;
  r->table = calloc(size, sizeof(uint32_t));
  r->slot_key = calloc(capacity, sizeof(uint64_t));
  r->slabs = calloc(capacity / VMDI_SLAB_BLOCKS + 1, sizeof(char *));
  r->ring_mask = VMDI_RAM_RING_SLOTS - 1;
  r->ring = calloc(r->ring_mask + 1, sizeof(uint64_t));
  if (!r->table || !r->slot_key || !r->slabs || !r->ring) {
    vmdi_ram_free(r);
    return NULL;
  }
  pthread_mutex_init(&(r->mut), NULL);
  return r;
}

void vmdi_ram_free (vmdi_ram_t *r) {
  if (r == NULL) return;
  free(r->table);
  free(r->slot_key);
  free(r->slabs);
  free(r->ring);
  free(r);
}

int vmdi_ram_slab (vmdi_ram_t *r, uint32_t index, char *slab) {
  if (index > r->capacity / VMDI_SLAB_BLOCKS) return 0;
  pthread_mutex_lock(&(r->mut));
  r->slabs[index] = slab;
  if (index + 1 > r->nslabs) r->nslabs = index + 1;
  pthread_mutex_unlock(&(r->mut));
  return 1;
}

int vmdi_ram_store (vmdi_ram_t *r, uint32_t slot, uint64_t key, const char *src, size_t src_len, uint32_t at, int servable) {
  if (slot >= r->capacity) return 0;
  pthread_mutex_lock(&(r->mut));
  unindex(r, slot);
  if (slot / VMDI_SLAB_BLOCKS >= r->nslabs || r->slabs[slot / VMDI_SLAB_BLOCKS] == NULL || at + VMDI_BLOCK_SIZE > src_len) {
    pthread_mutex_unlock(&(r->mut));
    return 0;
  }
  memcpy(block_of(r, slot), src + at, VMDI_BLOCK_SIZE);
  if (servable) index_slot(r, slot, key);
  pthread_mutex_unlock(&(r->mut));
  return 1;
}

int vmdi_ram_drop (vmdi_ram_t *r, uint32_t slot) {
  if (slot >= r->capacity) return 0;
  pthread_mutex_lock(&(r->mut));
  unindex(r, slot);
  pthread_mutex_unlock(&(r->mut));
  return 1;
}

int64_t vmdi_ram_slot_of (vmdi_ram_t *r, uint64_t key) {
  pthread_mutex_lock(&(r->mut));
  int64_t s = lookup(r, key);
  pthread_mutex_unlock(&(r->mut));
  return s;
}

int vmdi_ram_read (vmdi_ram_t *r, uint32_t image, int fd, char *buf, size_t len, off_t offset) {
  if (len == 0 || offset < 0) return -1;
  uint64_t first = (uint64_t) offset >> VMDI_BLOCK_SHIFT;
  uint64_t last = ((uint64_t) offset + len - 1) >> VMDI_BLOCK_SHIFT;
  if (last - first >= VMDI_RAM_MAX_SPAN) return -1;
  // The router grows the file before a write past its end lands and drops RAM
  // copies before a truncate shrinks it: a read past the end is JavaScript's.
  struct stat st;
  if (fstat(fd, &st) != 0 || (uint64_t) offset + len > (uint64_t) st.st_size) {
    __atomic_add_fetch(&(r->fallbacks), 1, __ATOMIC_RELAXED);
    return -1;
  }
  uint64_t base = (uint64_t) image << VMDI_KEY_IMAGE_SHIFT;
  uint32_t slots[VMDI_RAM_MAX_SPAN];
  pthread_mutex_lock(&(r->mut));
  for (uint64_t b = first; b <= last; b++) {
    int64_t s = lookup(r, base + b);
    if (s < 0) {
      r->fallbacks++;
      pthread_mutex_unlock(&(r->mut));
      return -1;
    }
    slots[b - first] = (uint32_t) s;
  }
  for (uint64_t b = first; b <= last; b++) {
    uint64_t start = b << VMDI_BLOCK_SHIFT;
    uint64_t end = (b + 1) << VMDI_BLOCK_SHIFT;
    uint64_t lo = start > (uint64_t) offset ? start : (uint64_t) offset;
    uint64_t hi = end < (uint64_t) offset + len ? end : (uint64_t) offset + len;
    memcpy(buf + (lo - offset), block_of(r, slots[b - first]) + (lo - start), hi - lo);
    if (r->ring_head - r->ring_tail <= r->ring_mask) r->ring[(r->ring_head++) & r->ring_mask] = base + b;
    else r->ring_lost++;
  }
  r->hits += last - first + 1;
  r->requests++;
  pthread_mutex_unlock(&(r->mut));
  return (int) len;
}

uint32_t vmdi_ram_drain (vmdi_ram_t *r, double *out, size_t length) {
  uint32_t n = 0;
  pthread_mutex_lock(&(r->mut));
  while (n < length && r->ring_tail != r->ring_head) out[n++] = (double) r->ring[(r->ring_tail++) & r->ring_mask];
  pthread_mutex_unlock(&(r->mut));
  return n;
}

void vmdi_ram_stats (vmdi_ram_t *r, uint64_t out[4]) {
  pthread_mutex_lock(&(r->mut));
  out[0] = r->hits;
  out[1] = r->requests;
  out[2] = r->fallbacks;
  out[3] = r->ring_lost;
  pthread_mutex_unlock(&(r->mut));
}
