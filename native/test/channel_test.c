/*
 * channel_test.c: the steps of native/fuse/channel.c's receive and send, without a
 * mount: OPEN and CREATE request ids are noted; the successful direct_io reply of a
 * handle the direct path serves, or of an image handle marked parallel (it has a
 * native data table), gets FOPEN_PARALLEL_DIRECT_WRITES, once; replies of other
 * handles, without direct_io, of other requests or with an error do not.
 * Built (with libfuse) and run by test/native/c.test.ts.
 */
#include <stdint.h>
#include <string.h>

#include "channel.h"
#include "check.h"

/* linux/fuse.h's layouts, as the kernel sends and expects them. */
struct in_header { uint32_t len; uint32_t opcode; uint64_t unique; uint64_t nodeid; uint32_t uid, gid, pid, padding; };
struct out_header { uint32_t len; int32_t error; uint64_t unique; };
struct open_out { uint64_t fh; uint32_t open_flags; uint32_t padding; };
#define ENTRY_OUT_SIZE 128  /* fuse_entry_out, before CREATE's fuse_open_out */

static vmdi_direct_t d;

static void request (uint32_t opcode, uint64_t unique) {
  struct in_header in = { sizeof(in), opcode, unique, 1, 0, 0, 0, 0 };
  vmdi_chan_note_request((const char *) &in, sizeof(in));
}

/* The open_flags the kernel would receive in the reply to `unique`. */
static uint32_t reply (int create, uint64_t unique, int32_t error, uint64_t fh, uint32_t flags) {
  struct out_header out = { 0, error, unique };
  char body[ENTRY_OUT_SIZE + sizeof(struct open_out)];
  memset(body, 0, sizeof(body));
  struct open_out *o = (struct open_out *) (body + (create ? ENTRY_OUT_SIZE : 0));
  o->fh = fh;
  o->open_flags = flags;
  struct iovec iov[2] = {
    { &out, sizeof(out) },
    { body, create ? sizeof(body) : sizeof(struct open_out) },
  };
  out.len = (uint32_t) (iov[0].iov_len + iov[1].iov_len);
  vmdi_chan_mark_reply(&d, iov, error ? 1 : 2);
  return o->open_flags;
}

int main (void) {
  const uint32_t DIO = VMDI_FOPEN_DIRECT_IO, PAR = VMDI_FOPEN_PARALLEL_DIRECT_WRITES;
  CHECK_EQ(1, vmdi_direct_set(&d, 5, 10));  /* fh 5: direct path */
  uint64_t flagged = vmdi_chan_parallel_opens();

  request(VMDI_FUSE_OPEN, 100);
  CHECK_EQ(DIO | PAR, reply(0, 100, 0, 5, DIO));
  CHECK_EQ(flagged + 1, vmdi_chan_parallel_opens());
  CHECK_EQ(DIO, reply(0, 100, 0, 5, DIO));  /* the id was used up */

  request(VMDI_FUSE_CREATE, 101);
  CHECK_EQ(DIO | PAR, reply(1, 101, 0, 5, DIO));  /* fuse_open_out after fuse_entry_out */

  request(VMDI_FUSE_OPEN, 102);
  CHECK_EQ(0, reply(0, 102, 0, 5, 0));             /* no direct_io: the page cache serialises anyway */
  request(VMDI_FUSE_OPEN, 103);
  CHECK_EQ(DIO, reply(0, 103, 0, 6, DIO));         /* fh 6: JavaScript's (an image) */
  request(VMDI_FUSE_OPEN, 104);
  CHECK_EQ(DIO, reply(0, 104, 0, VMDI_FH_LIMIT + 5, DIO));
  CHECK_EQ(DIO, reply(0, 105, 0, 5, DIO));         /* not an OPEN noted: a read's reply is left alone */
  request(1 /* LOOKUP */, 106);
  CHECK_EQ(DIO, reply(0, 106, 0, 5, DIO));
  request(VMDI_FUSE_OPEN, 0);
  CHECK_EQ(DIO, reply(0, 0, 0, 5, DIO));           /* unique 0 (notifications) never matches */
  CHECK_EQ(flagged + 2, vmdi_chan_parallel_opens());

  /* a failed open forgets its id: a later reply with that id is not an open's */
  request(VMDI_FUSE_OPEN, 107);
  reply(0, 107, -13, 0, 0);
  CHECK_EQ(DIO, reply(0, 107, 0, 5, DIO));

  /* a short request is not read past its end */
  struct in_header in = { sizeof(in), VMDI_FUSE_OPEN, 108, 1, 0, 0, 0, 0 };
  vmdi_chan_note_request((const char *) &in, 8);
  CHECK_EQ(DIO, reply(0, 108, 0, 5, DIO));

  /* the table holds the last VMDI_OPENS_PENDING ids: older ones are overwritten */
  for (uint64_t u = 1000; u < 1000 + VMDI_OPENS_PENDING + 1; u++) request(VMDI_FUSE_OPEN, u);
  CHECK_EQ(DIO, reply(0, 1000, 0, 5, DIO));
  CHECK_EQ(DIO | PAR, reply(0, 1001, 0, 5, DIO));
  CHECK_EQ(DIO | PAR, reply(0, 1000 + VMDI_OPENS_PENDING, 0, 5, DIO));

  /* the direct path dropped: no longer flagged */
  CHECK_EQ(1, vmdi_direct_set(&d, 5, -1));
  request(VMDI_FUSE_OPEN, 2000);
  CHECK_EQ(DIO, reply(0, 2000, 0, 5, DIO));

  /* an image handle with a native data table (parallel, no store fd): flagged too,
   * with direct_io only; no longer once its table is unregistered */
  CHECK_EQ(0, vmdi_direct_parallel(&d, 6));
  CHECK_EQ(1, vmdi_direct_set_parallel(&d, 6, 1));
  CHECK_EQ(1, vmdi_direct_parallel(&d, 6));
  CHECK_EQ(-1, vmdi_direct_fd(&d, 6));
  request(VMDI_FUSE_OPEN, 2001);
  CHECK_EQ(DIO | PAR, reply(0, 2001, 0, 6, DIO));
  request(VMDI_FUSE_CREATE, 2002);
  CHECK_EQ(DIO | PAR, reply(1, 2002, 0, 6, DIO));
  request(VMDI_FUSE_OPEN, 2003);
  CHECK_EQ(0, reply(0, 2003, 0, 6, 0));
  request(VMDI_FUSE_OPEN, 2004);
  CHECK_EQ(DIO, reply(0, 2004, 0, 7, DIO));  /* another handle */
  CHECK_EQ(0, vmdi_direct_set_parallel(&d, VMDI_FH_LIMIT, 1));
  CHECK_EQ(0, vmdi_direct_parallel(&d, VMDI_FH_LIMIT));
  CHECK_EQ(1, vmdi_direct_set_parallel(&d, 6, 0));
  request(VMDI_FUSE_OPEN, 2005);
  CHECK_EQ(DIO, reply(0, 2005, 0, 6, DIO));
  CHECKS_DONE();
}
