/*
 * vmdi_fuse.c: the hooks fuse-native's read and write handlers call, and the
 * addon's functions for the direct path, the RAM index and the native data tables
 * (see vmdi_fuse.h).
 *
 * Threads: vmdi_fuse_read/write run on libfuse worker threads; every NAPI method
 * here runs on the Node main thread (JavaScript: node_modules/fuse-native/index.js,
 * setDirect, directStats, directSlow, ram*, data*).
 */
#define FUSE_USE_VERSION 29

#include "vmdi_fuse.h"
#include "channel.h"

#include <napi-macros.h>
#include <fuse.h>

static size_t thread_offset = 0;

/* The vmdi_fuse_t inside the fuse_thread_t Buffer that is argument i. */
#define VMDI_ARGV_FUSE(name, i) \
  NAPI_ARGV_BUFFER_CAST(char *, name##_thread, i); \
  vmdi_fuse_t *name = (vmdi_fuse_t *) (name##_thread + thread_offset);

int vmdi_fuse_read (vmdi_fuse_t *v, struct fuse_file_info *info, char *buf, size_t len, off_t offset) {
  if (info == NULL || info->fh >= VMDI_FH_LIMIT) return VMDI_FUSE_PASS;
  int dfd = vmdi_direct_fd(&(v->direct), info->fh);
  if (dfd >= 0) return vmdi_direct_read(&(v->direct), info->fh, dfd, buf, len, offset);
  /* Data blocks first (their table allows it: the HDD file is their authority, a RAM copy of
   * one is a clean copy), so a data read costs no RAM-index mutex and no fstat; meta-data
   * blocks (NONE in the table) then try the RAM index. */
  vmdi_data_t *t = __atomic_load_n(&(v->data[info->fh]), __ATOMIC_ACQUIRE);
  if (t != NULL) {
    int n = vmdi_data_read(t, buf, len, offset);
    if (n != VMDI_DATA_PASS) return n;
  }
  vmdi_ram_t *r = (vmdi_ram_t *) __atomic_load_n(&(v->ram), __ATOMIC_ACQUIRE);
  uint32_t img = r == NULL ? 0 : __atomic_load_n(&(v->ram_image[info->fh]), __ATOMIC_ACQUIRE);
  if (img != 0) {
    int fd = __atomic_load_n(&(v->ram_fd[info->fh]), __ATOMIC_ACQUIRE);
    int n = vmdi_ram_read(r, img - 1, fd, buf, len, offset);
    if (n >= 0) return n;
  }
  return VMDI_FUSE_PASS;
}

int vmdi_fuse_write (vmdi_fuse_t *v, struct fuse_file_info *info, const char *buf, size_t len, off_t offset) {
  if (info == NULL || info->fh >= VMDI_FH_LIMIT) return VMDI_FUSE_PASS;
  int dfd = vmdi_direct_fd(&(v->direct), info->fh);
  if (dfd >= 0) return vmdi_direct_write(&(v->direct), info->fh, dfd, buf, len, offset);
  vmdi_data_t *t = __atomic_load_n(&(v->data[info->fh]), __ATOMIC_ACQUIRE);
  if (t == NULL) return VMDI_FUSE_PASS;
  int n = vmdi_data_write(t, buf, len, offset);
  return n == VMDI_DATA_PASS ? VMDI_FUSE_PASS : n;
}

static napi_value u32 (napi_env env, uint32_t v) {
  napi_value out;
  napi_create_uint32(env, v, &out);
  return out;
}

static void set_double (napi_env env, napi_value arr, uint32_t i, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  napi_set_element(env, arr, i, v);
}

// fuse_native_set_direct(thread, fh, fd): serve fh with fd (fd >= 0) or stop (fd < 0).
static NAPI_METHOD(fuse_native_set_direct) {
  NAPI_ARGV(3)
  VMDI_ARGV_FUSE(v, 0)
  NAPI_ARGV_UINT32(fh, 1);
  NAPI_ARGV_INT32(fd, 2);
  uint32_t ok = (uint32_t) vmdi_direct_set(&(v->direct), fh, fd);
  NAPI_RETURN_UINT32(ok)
}

// [reads, writes, read bytes, written bytes, open replies flagged for parallel
// writes, most direct writes in flight together]
static NAPI_METHOD(fuse_native_direct_stats) {
  NAPI_ARGV(1)
  VMDI_ARGV_FUSE(v, 0)
  vmdi_direct_t *d = &(v->direct);
  napi_value arr;
  napi_create_array_with_length(env, 6, &arr);
  set_double(env, arr, 0, (double) __atomic_load_n(&(d->reads), __ATOMIC_RELAXED));
  set_double(env, arr, 1, (double) __atomic_load_n(&(d->writes), __ATOMIC_RELAXED));
  set_double(env, arr, 2, (double) __atomic_load_n(&(d->read_bytes), __ATOMIC_RELAXED));
  set_double(env, arr, 3, (double) __atomic_load_n(&(d->write_bytes), __ATOMIC_RELAXED));
  set_double(env, arr, 4, (double) vmdi_chan_parallel_opens());
  set_double(env, arr, 5, (double) vmdi_direct_writes_together_max());
  return arr;
}

// fuse_native_direct_slow(thread, ms): operations in flight for at least ms:
// [fh, is_write, started_ms, ...].
static NAPI_METHOD(fuse_native_direct_slow) {
  NAPI_ARGV(2)
  VMDI_ARGV_FUSE(v, 0)
  NAPI_ARGV_UINT32(ms, 1);
  vmdi_direct_op_t ops[VMDI_DIRECT_SLOTS];
  int n = vmdi_direct_slow(&(v->direct), ms, ops);
  napi_value arr;
  napi_create_array(env, &arr);
  uint32_t k = 0;
  for (int i = 0; i < n; i++) {
    set_double(env, arr, k++, (double) ops[i].fh);
    napi_value w;
    napi_create_uint32(env, (uint32_t) ops[i].is_write, &w);
    napi_set_element(env, arr, k++, w);
    set_double(env, arr, k++, (double) ops[i].started);
  }
  return arr;
}

// fuse_native_ram_init(thread, capacity in slots): once per mount; 1 or 0.
static NAPI_METHOD(fuse_native_ram_init) {
  NAPI_ARGV(2)
  VMDI_ARGV_FUSE(v, 0)
  NAPI_ARGV_UINT32(capacity, 1);
  if (v->ram != NULL) return u32(env, 0);
  vmdi_ram_t *r = vmdi_ram_new(capacity);
  if (r == NULL) return u32(env, 0);
  __atomic_store_n(&(v->ram), r, __ATOMIC_RELEASE);
  return u32(env, 1);
}

// fuse_native_ram_slab(thread, index, Buffer): slab `index` of the RAM tier.
static NAPI_METHOD(fuse_native_ram_slab) {
  NAPI_ARGV(3)
  VMDI_ARGV_FUSE(v, 0)
  NAPI_ARGV_UINT32(index, 1);
  NAPI_ARGV_BUFFER(slab, 2);
  if (v->ram == NULL) return u32(env, 0);
  return u32(env, (uint32_t) vmdi_ram_slab(v->ram, index, slab));
}

// fuse_native_ram_store(thread, slot, key, src, srcOffset, servable): the slot's
// bytes become src[srcOffset..+4096); indexed under key when servable.
static NAPI_METHOD(fuse_native_ram_store) {
  NAPI_ARGV(6)
  VMDI_ARGV_FUSE(v, 0)
  NAPI_ARGV_UINT32(slot, 1);
  double key;
  napi_get_value_double(env, argv[2], &key);
  NAPI_ARGV_BUFFER(src, 3);
  NAPI_ARGV_UINT32(at, 4);
  NAPI_ARGV_UINT32(servable, 5);
  if (v->ram == NULL) return u32(env, 0);
  return u32(env, (uint32_t) vmdi_ram_store(v->ram, slot, (uint64_t) key, src, src_len, at, servable != 0));
}

// fuse_native_ram_drop(thread, slot): the slot is no longer indexed.
static NAPI_METHOD(fuse_native_ram_drop) {
  NAPI_ARGV(2)
  VMDI_ARGV_FUSE(v, 0)
  NAPI_ARGV_UINT32(slot, 1);
  if (v->ram == NULL) return u32(env, 0);
  return u32(env, (uint32_t) vmdi_ram_drop(v->ram, slot));
}

// fuse_native_ram_drain(thread, Float64Array): keys of blocks served since the
// last drain (as many as fit); returns how many were written.
static NAPI_METHOD(fuse_native_ram_drain) {
  NAPI_ARGV(2)
  VMDI_ARGV_FUSE(v, 0)
  napi_typedarray_type type;
  size_t length;
  void *data;
  napi_value ab;
  size_t offset;
  napi_get_typedarray_info(env, argv[1], &type, &length, &data, &ab, &offset);
  if (v->ram == NULL || type != napi_float64_array) return u32(env, 0);
  return u32(env, vmdi_ram_drain(v->ram, (double *) data, length));
}

// fuse_native_ram_fh(thread, fh, image id + 1 or 0, HDD fd): serve reads of fh
// from RAM, or stop.
static NAPI_METHOD(fuse_native_ram_fh) {
  NAPI_ARGV(4)
  VMDI_ARGV_FUSE(v, 0)
  NAPI_ARGV_UINT32(fh, 1);
  NAPI_ARGV_UINT32(img, 2);
  NAPI_ARGV_INT32(fd, 3);
  if (fh >= VMDI_FH_LIMIT) return u32(env, 0);
  if (img == 0) {
    __atomic_store_n(&(v->ram_image[fh]), 0, __ATOMIC_RELEASE);
  } else {
    __atomic_store_n(&(v->ram_fd[fh]), fd, __ATOMIC_RELEASE);
    __atomic_store_n(&(v->ram_image[fh]), img, __ATOMIC_RELEASE);
  }
  return u32(env, 1);
}

// [blocks served, reads answered, reads sent to JavaScript, ring entries lost]
static NAPI_METHOD(fuse_native_ram_stats) {
  NAPI_ARGV(1)
  VMDI_ARGV_FUSE(v, 0)
  uint64_t s[4] = { 0, 0, 0, 0 };
  if (v->ram != NULL) vmdi_ram_stats(v->ram, s);
  napi_value arr;
  napi_create_array_with_length(env, 4, &arr);
  for (uint32_t i = 0; i < 4; i++) set_double(env, arr, i, (double) s[i]);
  return arr;
}

/* The native data table that is argument i (an External of fuse_native_data_new),
 * or NULL after throwing a TypeError. */
static vmdi_data_t *arg_table (napi_env env, napi_value v) {
  napi_valuetype type;
  void *t = NULL;
  if (napi_typeof(env, v, &type) != napi_ok || type != napi_external || napi_get_value_external(env, v, &t) != napi_ok || t == NULL) {
    napi_throw_type_error(env, "EINVAL", "Expected a native data table (dataNew)");
    return NULL;
  }
  return (vmdi_data_t *) t;
}

/* Argument v as a whole number in [0, 2^64); 0 after throwing a TypeError. */
static int arg_u64 (napi_env env, napi_value v, uint64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0 && d < 18446744073709551616.0) || d != (double) (uint64_t) d) {
    napi_throw_type_error(env, "EINVAL", "Expected a whole number >= 0");
    return 0;
  }
  *out = (uint64_t) d;
  return 1;
}

#define VMDI_ARGV_TABLE(name, i) \
  vmdi_data_t *name = arg_table(env, argv[i]); \
  if (name == NULL) return NULL;

#define VMDI_ARGV_U64(name, i) \
  uint64_t name; \
  if (!arg_u64(env, argv[i], &name)) return NULL;

// fuse_native_data_new(image, fd): a native data table (an External; never freed,
// see vmdi_data_retire), or null when memory is short.
static NAPI_METHOD(fuse_native_data_new) {
  NAPI_ARGV(2)
  NAPI_ARGV_UINT32(image, 0);
  NAPI_ARGV_INT32(fd, 1);
  vmdi_data_t *t = vmdi_data_new(image, fd);
  napi_value out;
  if (t == NULL) napi_get_null(env, &out);
  else napi_create_external(env, t, NULL, NULL, &out);
  return out;
}

// fuse_native_data_set(table, start block, count, state): 1 or 0.
static NAPI_METHOD(fuse_native_data_set) {
  NAPI_ARGV(4)
  VMDI_ARGV_TABLE(t, 0)
  VMDI_ARGV_U64(start, 1)
  VMDI_ARGV_U64(count, 2)
  NAPI_ARGV_UINT32(state, 3);
  return u32(env, (uint32_t) vmdi_data_set(t, start, count, state > VMDI_NATIVE_RW ? -1 : (int) state));
}

// fuse_native_data_clamp(table, start block, count, max): 1 or 0.
static NAPI_METHOD(fuse_native_data_clamp) {
  NAPI_ARGV(4)
  VMDI_ARGV_TABLE(t, 0)
  VMDI_ARGV_U64(start, 1)
  VMDI_ARGV_U64(count, 2)
  NAPI_ARGV_UINT32(max, 3);
  return u32(env, (uint32_t) vmdi_data_clamp(t, start, count, max > VMDI_NATIVE_RW ? -1 : (int) max));
}

// fuse_native_data_get(table, block): its state.
static NAPI_METHOD(fuse_native_data_get) {
  NAPI_ARGV(2)
  VMDI_ARGV_TABLE(t, 0)
  VMDI_ARGV_U64(block, 1)
  return u32(env, (uint32_t) vmdi_data_get(t, block));
}

// fuse_native_data_size(table, bytes): the image file's size as JavaScript knows it.
static NAPI_METHOD(fuse_native_data_size) {
  NAPI_ARGV(2)
  VMDI_ARGV_TABLE(t, 0)
  VMDI_ARGV_U64(bytes, 1)
  vmdi_data_set_size(t, bytes);
  return NULL;
}

// fuse_native_data_reads_js(table, on): every read to JavaScript (1) or not (0).
static NAPI_METHOD(fuse_native_data_reads_js) {
  NAPI_ARGV(2)
  VMDI_ARGV_TABLE(t, 0)
  NAPI_ARGV_UINT32(on, 1);
  vmdi_data_reads_to_js(t, on != 0);
  return NULL;
}

// fuse_native_data_writes_js(table, on): every write to JavaScript (1) or not (0);
// returns once the native writes in flight have finished.
static NAPI_METHOD(fuse_native_data_writes_js) {
  NAPI_ARGV(2)
  VMDI_ARGV_TABLE(t, 0)
  NAPI_ARGV_UINT32(on, 1);
  vmdi_data_writes_to_js(t, on != 0);
  return NULL;
}

// fuse_native_data_fh(thread, fh, table or null): serve fh with the table (and
// let its writes run in parallel), or stop. 1, or 0 when fh is too large.
static NAPI_METHOD(fuse_native_data_fh) {
  NAPI_ARGV(3)
  VMDI_ARGV_FUSE(v, 0)
  NAPI_ARGV_UINT32(fh, 1);
  napi_valuetype type;
  napi_typeof(env, argv[2], &type);
  vmdi_data_t *t = NULL;
  if (type != napi_null && type != napi_undefined) {
    t = arg_table(env, argv[2]);
    if (t == NULL) return NULL;
  }
  if (fh >= VMDI_FH_LIMIT) return u32(env, 0);
  if (t == NULL) vmdi_direct_set_parallel(&(v->direct), fh, 0);
  __atomic_store_n(&(v->data[fh]), t, __ATOMIC_RELEASE);
  if (t != NULL) vmdi_direct_set_parallel(&(v->direct), fh, 1);
  return u32(env, 1);
}

// [reads, writes, read bytes, written bytes, last read ms, last write ms,
// requests passed to JavaScript, bytes of the table's memory]
static NAPI_METHOD(fuse_native_data_stats) {
  NAPI_ARGV(1)
  VMDI_ARGV_TABLE(t, 0)
  uint64_t s[8];
  vmdi_data_stats(t, s);
  napi_value arr;
  napi_create_array_with_length(env, 8, &arr);
  for (uint32_t i = 0; i < 8; i++) set_double(env, arr, i, (double) s[i]);
  return arr;
}

// fuse_native_data_retire(table): returns once no native I/O runs on it; it
// answers PASS from then on and its memory (but a few KiB) is freed.
static NAPI_METHOD(fuse_native_data_retire) {
  NAPI_ARGV(1)
  VMDI_ARGV_TABLE(t, 0)
  vmdi_data_retire(t);
  return NULL;
}

// fuse_native_set_generation_base(base): see vmdi_chan_set_generation_base.
static NAPI_METHOD(fuse_native_set_generation_base) {
  NAPI_ARGV(1)
  NAPI_ARGV_UINT32(base, 0);
  vmdi_chan_set_generation_base(base);
  return NULL;
}

// The constants this addon was compiled with (vmdi_constants.h), for
// test/native/constants.test.ts to hold against src/native/constants.ts.
static void export_constants (napi_env env, napi_value exports) {
  static const struct { const char *name; uint32_t value; } all[] = {
    { "BLOCK_SHIFT", VMDI_BLOCK_SHIFT },
    { "BLOCK_SIZE", VMDI_BLOCK_SIZE },
    { "KEY_IMAGE_SHIFT", VMDI_KEY_IMAGE_SHIFT },
    { "IMAGE_ID_LIMIT", VMDI_IMAGE_ID_LIMIT },
    { "SLAB_BLOCKS", VMDI_SLAB_BLOCKS },
    { "RAM_RING_SLOTS", VMDI_RAM_RING_SLOTS },
    { "FH_LIMIT", VMDI_FH_LIMIT },
    { "OPEN_DIRECT_IO", VMDI_OPEN_DIRECT_IO },
    { "OPEN_KEEP_CACHE", VMDI_OPEN_KEEP_CACHE },
    { "NATIVE_NONE", VMDI_NATIVE_NONE },
    { "NATIVE_READ", VMDI_NATIVE_READ },
    { "NATIVE_RW", VMDI_NATIVE_RW },
  };
  napi_value obj;
  napi_create_object(env, &obj);
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) napi_set_named_property(env, obj, all[i].name, u32(env, all[i].value));
  napi_set_named_property(env, exports, "vmdi_constants", obj);
}

void vmdi_fuse_export (napi_env env, napi_value exports, size_t offset) {
  thread_offset = offset;
  NAPI_EXPORT_FUNCTION(fuse_native_set_direct)
  NAPI_EXPORT_FUNCTION(fuse_native_direct_stats)
  NAPI_EXPORT_FUNCTION(fuse_native_direct_slow)
  NAPI_EXPORT_FUNCTION(fuse_native_ram_init)
  NAPI_EXPORT_FUNCTION(fuse_native_ram_slab)
  NAPI_EXPORT_FUNCTION(fuse_native_ram_store)
  NAPI_EXPORT_FUNCTION(fuse_native_ram_drop)
  NAPI_EXPORT_FUNCTION(fuse_native_ram_drain)
  NAPI_EXPORT_FUNCTION(fuse_native_ram_fh)
  NAPI_EXPORT_FUNCTION(fuse_native_ram_stats)
  NAPI_EXPORT_FUNCTION(fuse_native_data_new)
  NAPI_EXPORT_FUNCTION(fuse_native_data_set)
  NAPI_EXPORT_FUNCTION(fuse_native_data_clamp)
  NAPI_EXPORT_FUNCTION(fuse_native_data_get)
  NAPI_EXPORT_FUNCTION(fuse_native_data_size)
  NAPI_EXPORT_FUNCTION(fuse_native_data_writes_js)
  NAPI_EXPORT_FUNCTION(fuse_native_data_reads_js)
  NAPI_EXPORT_FUNCTION(fuse_native_data_fh)
  NAPI_EXPORT_FUNCTION(fuse_native_data_stats)
  NAPI_EXPORT_FUNCTION(fuse_native_data_retire)
  NAPI_EXPORT_FUNCTION(fuse_native_set_generation_base)
  export_constants(env, exports);
}
