// Helpers shared by the floor programs: time, sockets, the missing region, the check.
#include "floor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

uint64_t floor_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double floor_cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

_Noreturn void floor_die(const char *what) {
    if (errno != 0) fprintf(stderr, "pager-floor-c: %s: %s\n", what, strerror(errno));
    else fprintf(stderr, "pager-floor-c: %s\n", what);
    exit(1);
}

static struct sockaddr_in address(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    errno = 0;
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) floor_die("not an IPv4 address");
    return a;
}

int floor_connect(const char *host, int port) {
    struct sockaddr_in a = address(host, port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) floor_die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

int floor_listen(const char *host, int port) {
    struct sockaddr_in a = address(host, port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 16) < 0) floor_die("listen");
    return fd;
}

int floor_read_full(int fd, void *buffer, size_t n) {
    unsigned char *p = buffer;
    while (n > 0) {
        // MSG_WAITALL: one call per request where the kernel can, as a tuned receiver would.
        ssize_t r = recv(fd, p, n, MSG_WAITALL);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

int floor_write_full(int fd, const void *buffer, size_t n) {
    const unsigned char *p = buffer;
    while (n > 0) {
        ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

void *floor_missing_region(size_t bytes, int *uffd) {
    // Fresh, never touched: the pager's workload maps its memory the same way.
    void *region = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) floor_die("mmap");
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK); // poll() may report a fault already woken
    if (fd < 0) floor_die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API};
    if (ioctl(fd, UFFDIO_API, &api) < 0) floor_die("UFFDIO_API");
    struct uffdio_register r = {.range = {.start = (uint64_t)(uintptr_t)region, .len = bytes}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(fd, UFFDIO_REGISTER, &r) < 0) floor_die("UFFDIO_REGISTER");
    *uffd = fd;
    return region;
}

const unsigned char *floor_map_file(const char *path, size_t bytes) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) floor_die(path);
    void *m = mmap(NULL, bytes, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (m == MAP_FAILED) floor_die("mmap of the served file");
    close(fd);
    return m;
}

long floor_mismatches(const unsigned char *got, const unsigned char *want, const long *pages, long count) {
    long bad = 0;
    for (long i = 0; i < count; i++) {
        size_t at = (size_t)(pages ? pages[i] : i) * FLOOR_PAGE;
        if (memcmp(got + at, want + at, FLOOR_PAGE) != 0) bad++;
    }
    return bad;
}

static int by_value(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void floor_print_waits(uint64_t *waits, long count) {
    qsort(waits, (size_t)count, sizeof(uint64_t), by_value);
#define AT(q) (count ? waits[(long)((double)(count - 1) * (q))] : 0)
    printf(" waits=%ld wait-p50-ns=%llu wait-p90-ns=%llu wait-p99-ns=%llu wait-p999-ns=%llu wait-max-ns=%llu", count,
           (unsigned long long)AT(0.5), (unsigned long long)AT(0.9), (unsigned long long)AT(0.99), (unsigned long long)AT(0.999),
           (unsigned long long)AT(1.0));
#undef AT
}
