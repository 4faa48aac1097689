/*
 * nfs-pwrite: in-place writes into an existing file over NFS, and a file
 * handle held across a server restart. A small client on libnfs (Debian's
 * libnfs-dev): libnfs's own tools cannot do either (nfs-cp refuses to
 * overwrite, NFS3ERR_EXIST; each tool opens, does one thing and exits).
 *
 *   nfs-pwrite URL OFFSET        write all of stdin at byte OFFSET of the file
 *                                at URL (no create, no truncate), then COMMIT
 *                                (fsync); prints "wrote N at OFFSET".
 *   nfs-pwrite --hold URL        open the file once, print "open", then answer
 *                                each stdin line "OFFSET COUNT" with a read
 *                                through that same open handle: "ok N HEX" or
 *                                "error MESSAGE" (one line each; stdout flushed).
 *
 * URL: nfs://SERVER/EXPORT/FILE?version=3 (libnfs's URL syntax; nfsport= and
 * mountport= are accepted too). Debian's libnfs 4.0 fails NFSv4 writes over
 * 3,750 bytes (fixed in libnfs 5): write with version=3.
 *
 * Build: gcc -O2 -Wall -o nfs-pwrite nfs-pwrite.c $(pkg-config --cflags --libs libnfs)
 * Exit status: 0 done, 1 an NFS or I/O error (named on stderr), 2 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nfsc/libnfs.h>

/* Largest single write handed to libnfs; it splits further to the server's wsize. */
#define CHUNK (1024 * 1024)

static void usage(void) {
  fprintf(stderr,
          "usage: nfs-pwrite URL OFFSET < DATA\n"
          "       nfs-pwrite --hold URL   (then lines \"OFFSET COUNT\" on stdin)\n");
  exit(2);
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || end == s || *end) return -1;
  *out = v;
  return 0;
}

/* Mounts the export of URL and opens its file with `flags`. Exits on failure. */
static struct nfsfh *open_url(struct nfs_context *nfs, const char *url_text, int flags) {
  struct nfs_url *url = nfs_parse_url_full(nfs, url_text);
  if (!url) {
    fprintf(stderr, "nfs-pwrite: %s: %s\n", url_text, nfs_get_error(nfs));
    exit(2);
  }
  if (nfs_mount(nfs, url->server, url->path) != 0) {
    fprintf(stderr, "nfs-pwrite: mount %s:%s: %s\n", url->server, url->path, nfs_get_error(nfs));
    exit(1);
  }
  struct nfsfh *fh;
  if (nfs_open(nfs, url->file, flags, &fh) != 0) {
    fprintf(stderr, "nfs-pwrite: open %s: %s\n", url->file, nfs_get_error(nfs));
    exit(1);
  }
  nfs_destroy_url(url);
  return fh;
}

static int write_stdin(struct nfs_context *nfs, struct nfsfh *fh, uint64_t offset) {
  char *buf = malloc(CHUNK);
  if (!buf) return perror("nfs-pwrite: malloc"), 1;
  uint64_t pos = offset;
  for (;;) {
    /* Fill the buffer as far as stdin allows, so writes go out in large requests. */
    size_t have = 0;
    while (have < CHUNK) {
      ssize_t n = read(0, buf + have, CHUNK - have);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return perror("nfs-pwrite: stdin"), 1;
      if (n == 0) break;
      have += (size_t)n;
    }
    if (have == 0) break;
    for (size_t done = 0; done < have;) {
      int n = nfs_pwrite(nfs, fh, pos, have - done, buf + done);
      if (n <= 0) {
        fprintf(stderr, "nfs-pwrite: write at %" PRIu64 ": %s\n", pos, n < 0 ? nfs_get_error(nfs) : "wrote nothing");
        return 1;
      }
      done += (size_t)n;
      pos += (uint64_t)n;
    }
  }
  free(buf);
  if (nfs_fsync(nfs, fh) != 0) {
    fprintf(stderr, "nfs-pwrite: commit: %s\n", nfs_get_error(nfs));
    return 1;
  }
  printf("wrote %" PRIu64 " at %" PRIu64 "\n", pos - offset, offset);
  return 0;
}

/* One line per request; the handle is never reopened, so a stale one shows as an error line. */
static int hold(struct nfs_context *nfs, struct nfsfh *fh) {
  printf("open\n");
  fflush(stdout);
  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    char off_s[64], count_s[64];
    uint64_t off, count;
    if (sscanf(line, "%63s %63s", off_s, count_s) != 2 || parse_u64(off_s, &off) || parse_u64(count_s, &count) || count > CHUNK) {
      printf("error bad request (want \"OFFSET COUNT\", COUNT at most %d)\n", CHUNK);
      fflush(stdout);
      continue;
    }
    unsigned char *buf = malloc(count ? count : 1);
    if (!buf) return perror("nfs-pwrite: malloc"), 1;
    int n = nfs_pread(nfs, fh, off, count, buf);
    if (n < 0) {
      printf("error %s\n", nfs_get_error(nfs));
    } else {
      printf("ok %d ", n);
      for (int i = 0; i < n; i++) printf("%02x", buf[i]);
      printf("\n");
    }
    free(buf);
    fflush(stdout);
  }
  return 0;
}

int main(int argc, char **argv) {
  int holding = argc == 3 && strcmp(argv[1], "--hold") == 0;
  if (!holding && argc != 3) usage();
  uint64_t offset = 0;
  if (!holding && parse_u64(argv[2], &offset)) usage();

  struct nfs_context *nfs = nfs_init_context();
  if (!nfs) {
    fprintf(stderr, "nfs-pwrite: nfs_init_context failed\n");
    return 1;
  }
  const char *url = holding ? argv[2] : argv[1];
  struct nfsfh *fh = open_url(nfs, url, holding ? O_RDONLY : O_WRONLY);
  int rc = holding ? hold(nfs, fh) : write_stdin(nfs, fh, offset);
  nfs_close(nfs, fh);
  nfs_destroy_context(nfs);
  return rc;
}
