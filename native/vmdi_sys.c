// Syscalls the pass-through needs and Node's fs module lacks: utimensat with
// nanoseconds (and UTIME_NOW/UTIME_OMIT), mknod (fifos, sockets, devices),
// the l*xattr family, statvfs, and sd_notify's datagram. All never follow a final symlink
// (AT_SYMLINK_NOFOLLOW, l* variants). Every function returns a negative errno
// on failure instead of throwing: the FUSE layer answers with it unchanged.
#define _GNU_SOURCE
#include <node_api.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

#define PATH_MAX_BYTES 4096
#define NAME_MAX_BYTES 256

static napi_value num(napi_env env, double v) {
  napi_value r;
  napi_create_double(env, v, &r);
  return r;
}

// The string's UTF-8 bytes and a NUL into buf: up to size - 1 bytes (a
// 4,095-byte path in a PATH_MAX buffer), -ENAMETOOLONG past that. The length is
// asked first: a copy cut at size - 1 bytes looks the same as one that fits.
static int get_str(napi_env env, napi_value v, char *buf, size_t size) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return -EINVAL;
  if (len >= size) return -ENAMETOOLONG;
  if (napi_get_value_string_utf8(env, v, buf, size, &len) != napi_ok) return -EINVAL;
  return 0;
}

static double get_num(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d;
}

// utimensat(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec) -> 0 | -errno
static napi_value sys_utimensat(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[PATH_MAX_BYTES];
  int e = get_str(env, argv[0], path, sizeof path);
  if (e) return num(env, e);
  struct timespec ts[2];
  ts[0].tv_sec = (time_t) get_num(env, argv[1]);
  ts[0].tv_nsec = (long) get_num(env, argv[2]);
  ts[1].tv_sec = (time_t) get_num(env, argv[3]);
  ts[1].tv_nsec = (long) get_num(env, argv[4]);
  int r = utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW);
  return num(env, r < 0 ? -errno : 0);
}

// mknod(path, mode, dev) -> 0 | -errno
static napi_value sys_mknod(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[PATH_MAX_BYTES];
  int e = get_str(env, argv[0], path, sizeof path);
  if (e) return num(env, e);
  int r = mknod(path, (mode_t) get_num(env, argv[1]), (dev_t) get_num(env, argv[2]));
  return num(env, r < 0 ? -errno : 0);
}

// A size probe, then the fetch, retried if the value grew in between:
// lgetxattr and llistxattr share this. Returns a Buffer or -errno.
typedef ssize_t (*fetch_fn)(const char *path, const char *name, char *buf, size_t size);

static ssize_t fetch_xattr(const char *path, const char *name, char *buf, size_t size) {
  return lgetxattr(path, name, buf, size);
}

static ssize_t fetch_list(const char *path, const char *name, char *buf, size_t size) {
  (void) name;
  return llistxattr(path, buf, size);
}

static napi_value sized_fetch(napi_env env, fetch_fn fetch, const char *path, const char *name) {
  for (int attempt = 0; attempt < 4; attempt++) {
    ssize_t size = fetch(path, name, NULL, 0);
    if (size < 0) return num(env, -errno);
    char *buf = malloc(size > 0 ? (size_t) size : 1);
    if (!buf) return num(env, -ENOMEM);
    ssize_t got = fetch(path, name, buf, (size_t) size);
    if (got < 0) {
      int err = errno;
      free(buf);
      if (err == ERANGE) continue; // grew between the two calls
      return num(env, -err);
    }
    napi_value out;
    void *data;
    napi_create_buffer_copy(env, (size_t) got, buf, &data, &out);
    free(buf);
    return out;
  }
  return num(env, -ERANGE);
}

// lgetxattr(path, name) -> Buffer | -errno
static napi_value sys_lgetxattr(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[PATH_MAX_BYTES], name[NAME_MAX_BYTES];
  int e = get_str(env, argv[0], path, sizeof path);
  if (!e) e = get_str(env, argv[1], name, sizeof name);
  if (e) return num(env, e);
  return sized_fetch(env, fetch_xattr, path, name);
}

// lsetxattr(path, name, value: Buffer, flags) -> 0 | -errno
static napi_value sys_lsetxattr(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[PATH_MAX_BYTES], name[NAME_MAX_BYTES];
  int e = get_str(env, argv[0], path, sizeof path);
  if (!e) e = get_str(env, argv[1], name, sizeof name);
  if (e) return num(env, e);
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok) return num(env, -EINVAL);
  int r = lsetxattr(path, name, data, len, (int) get_num(env, argv[3]));
  return num(env, r < 0 ? -errno : 0);
}

// llistxattr(path) -> Buffer of NUL-terminated names | -errno
static napi_value sys_llistxattr(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[PATH_MAX_BYTES];
  int e = get_str(env, argv[0], path, sizeof path);
  if (e) return num(env, e);
  return sized_fetch(env, fetch_list, path, NULL);
}

// lremovexattr(path, name) -> 0 | -errno
static napi_value sys_lremovexattr(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[PATH_MAX_BYTES], name[NAME_MAX_BYTES];
  int e = get_str(env, argv[0], path, sizeof path);
  if (!e) e = get_str(env, argv[1], name, sizeof name);
  if (e) return num(env, e);
  int r = lremovexattr(path, name);
  return num(env, r < 0 ? -errno : 0);
}

// statvfs(path) -> [bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax] | -errno
static napi_value sys_statvfs(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[PATH_MAX_BYTES];
  int e = get_str(env, argv[0], path, sizeof path);
  if (e) return num(env, e);
  struct statvfs s;
  if (statvfs(path, &s) < 0) return num(env, -errno);
  double v[11] = { (double) s.f_bsize, (double) s.f_frsize, (double) s.f_blocks, (double) s.f_bfree,
                   (double) s.f_bavail, (double) s.f_files, (double) s.f_ffree, (double) s.f_favail,
                   (double) (s.f_fsid & 0xffffffffUL), (double) s.f_flag, (double) s.f_namemax };
  napi_value arr;
  napi_create_array_with_length(env, 11, &arr);
  for (uint32_t i = 0; i < 11; i++) napi_set_element(env, arr, i, num(env, v[i]));
  return arr;
}

// preadNowait(fd, buf, offset, length, position) -> bytes | -errno.
// preadv2 with RWF_NOWAIT: answers from the page cache without blocking, or
// -EAGAIN when the data is not cached (the caller then reads on the thread
// pool). This saves the thread-pool round trip on every cached read.
static napi_value sys_pread_nowait(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok) return num(env, -EINVAL);
  double off = get_num(env, argv[2]), want = get_num(env, argv[3]), pos = get_num(env, argv[4]);
  if (off < 0 || want < 0 || off + want > (double) len) return num(env, -EINVAL);
  struct iovec iov = { (char *) data + (size_t) off, (size_t) want };
  ssize_t r = preadv2((int) get_num(env, argv[0]), &iov, 1, (off_t) pos, RWF_NOWAIT);
  return num(env, r < 0 ? -errno : (double) r);
}

// pwriteNowait(fd, buf, offset, length, position) -> bytes | -errno (RWF_NOWAIT, as above).
static napi_value sys_pwrite_nowait(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok) return num(env, -EINVAL);
  double off = get_num(env, argv[2]), want = get_num(env, argv[3]), pos = get_num(env, argv[4]);
  if (off < 0 || want < 0 || off + want > (double) len) return num(env, -EINVAL);
  struct iovec iov = { (char *) data + (size_t) off, (size_t) want };
  ssize_t r = pwritev2((int) get_num(env, argv[0]), &iov, 1, (off_t) pos, RWF_NOWAIT);
  return num(env, r < 0 ? -errno : (double) r);
}

// dataRanges(fd, start, end, max) -> [off0, end0, off1, end1, ...] | -errno: the
// parts of [start, end) that hold data (lseek SEEK_DATA / SEEK_HOLE), at most
// max ranges (the last one then runs to end). Holes read as zeros: a parser
// may skip them. A file system without hole reporting answers one range.
static napi_value sys_data_ranges(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int fd = (int) get_num(env, argv[0]);
  off_t pos = (off_t) get_num(env, argv[1]);
  off_t end = (off_t) get_num(env, argv[2]);
  uint32_t max = (uint32_t) get_num(env, argv[3]);
  napi_value arr;
  napi_create_array(env, &arr);
  uint32_t k = 0;
  while (pos < end && k / 2 < max) {
    off_t d = lseek(fd, pos, SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO) break; // no data after pos
      return num(env, -errno);
    }
    if (d >= end) break;
    off_t h = lseek(fd, d, SEEK_HOLE);
    if (h < 0) return num(env, -errno);
    if (h > end || k / 2 + 1 == max) h = end;
    napi_set_element(env, arr, k++, num(env, (double) d));
    napi_set_element(env, arr, k++, num(env, (double) h));
    pos = h;
  }
  return arr;
}

// punchHole(fd, offset, length) -> 0 | -errno: deallocates [offset, offset+length)
// (it reads as zeros afterwards), the file size unchanged.
static napi_value sys_punch_hole(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int r = fallocate((int) get_num(env, argv[0]), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) get_num(env, argv[1]), (off_t) get_num(env, argv[2]));
  return num(env, r < 0 ? -errno : 0);
}

// sdNotify(socket, message) -> 0 | -errno: one datagram to systemd's
// $NOTIFY_SOCKET (sd_notify(3) without libsystemd). A leading '@' names an
// abstract socket (the '@' becomes a NUL byte, the name is not NUL-terminated).
static napi_value sys_sd_notify(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char sock[sizeof(((struct sockaddr_un *) 0)->sun_path) + 1];
  char msg[PATH_MAX_BYTES];
  int e = get_str(env, argv[0], sock, sizeof sock);
  if (e) return num(env, e);
  e = get_str(env, argv[1], msg, sizeof msg);
  if (e) return num(env, e);
  size_t n = strlen(sock);
  if (n == 0 || (sock[0] != '/' && sock[0] != '@')) return num(env, -EINVAL);
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, sock, n);
  if (sock[0] == '@') addr.sun_path[0] = 0;
  socklen_t len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n + (sock[0] == '@' ? 0 : 1));
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return num(env, -errno);
  ssize_t r = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *) &addr, len);
  int err = r < 0 ? -errno : 0;
  close(fd);
  return num(env, err);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "utimensat", NULL, sys_utimensat, NULL, NULL, NULL, napi_default, NULL },
    { "mknod", NULL, sys_mknod, NULL, NULL, NULL, napi_default, NULL },
    { "lgetxattr", NULL, sys_lgetxattr, NULL, NULL, NULL, napi_default, NULL },
    { "lsetxattr", NULL, sys_lsetxattr, NULL, NULL, NULL, napi_default, NULL },
    { "llistxattr", NULL, sys_llistxattr, NULL, NULL, NULL, napi_default, NULL },
    { "lremovexattr", NULL, sys_lremovexattr, NULL, NULL, NULL, napi_default, NULL },
    { "statvfs", NULL, sys_statvfs, NULL, NULL, NULL, napi_default, NULL },
    { "preadNowait", NULL, sys_pread_nowait, NULL, NULL, NULL, napi_default, NULL },
    { "pwriteNowait", NULL, sys_pwrite_nowait, NULL, NULL, NULL, napi_default, NULL },
    { "dataRanges", NULL, sys_data_ranges, NULL, NULL, NULL, napi_default, NULL },
    { "punchHole", NULL, sys_punch_hole, NULL, NULL, NULL, napi_default, NULL },
    { "sdNotify", NULL, sys_sd_notify, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
