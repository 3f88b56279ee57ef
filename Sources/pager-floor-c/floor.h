// pager-floor-c: what this machine allows, measured by small C programs in the same run as
// the pager (pager-bench's floors). Shared helpers; each mode lives in its own file.
#pragma once
#include <stddef.h>
#include <stdint.h>

// The request every client sends: `length` bytes from `offset` of the served file (native byte
// order: both ends are this program on this machine). offset == FLOOR_STREAM asks for `length`
// bytes from offset 0 as one stream, sent in FLOOR_CHUNK writes.
struct floor_request {
    uint64_t offset;
    uint64_t length;
};
#define FLOOR_STREAM UINT64_MAX
// The unit the stream is sent, received and installed in: one 2 MiB huge page.
#define FLOOR_CHUNK (2u << 20)
#define FLOOR_PAGE 4096u

uint64_t floor_now_ns(void);
// User + system CPU seconds of this process so far (every thread).
double floor_cpu_seconds(void);
// Stops the program with a message naming what failed (errno's text when set).
_Noreturn void floor_die(const char *what);
int floor_connect(const char *host, int port);
int floor_listen(const char *host, int port);
// Reads or writes exactly `n` bytes; returns 0, or -1 on EOF or an error.
int floor_read_full(int fd, void *buffer, size_t n);
int floor_write_full(int fd, const void *buffer, size_t n);
// A fresh anonymous region of `bytes`, registered for MISSING faults on a new userfaultfd.
void *floor_missing_region(size_t bytes, int *uffd);
// The served file mapped read-only (for the server, and for the clients' check afterwards).
const unsigned char *floor_map_file(const char *path, size_t bytes);
// Pages of `got` that differ from `want` among `pages` (indices), or all pages when NULL.
long floor_mismatches(const unsigned char *got, const unsigned char *want, const long *pages, long count);
// Prints " waits=N wait-p50-ns=.. wait-p90-ns=.. wait-p99-ns=.. wait-p999-ns=.. wait-max-ns=.."
// (sorts `waits`).
void floor_print_waits(uint64_t *waits, long count);

int floor_serve(int argc, char **argv);
int floor_stream(int argc, char **argv);
int floor_naive(int argc, char **argv);
// The order pager-workload touches pages in (MigrationWorkload.accessOrder, same generator):
// returns a malloc'ed array and its length in *count.
long *floor_access_order(const char *access, long pages, uint64_t seed, long *count);
