// The naive pager: the obvious design a pager must beat. One handler thread reads a fault,
// asks the server for the aligned block of FETCH_PAGES pages around it, waits for the reply and
// installs it with one UFFDIO_COPY; no background transfer, no prefetch beyond the block, one
// request at a time. The main thread is the workload: it touches pages in pager-workload's
// order (same generator and seed), timing each wait, then, for a full run, every page not yet
// local in address order (the naive pager has no other way to finish), and checks every page.
//
// usage: pager-floor-c naive HOST PORT BYTES FILE FETCH_PAGES ACCESS SEED TOUCH_PAGES
//   TOUCH_PAGES 0: the whole region (a full transfer); else only the first N of the order.
// Prints "floor naive fetch-pages=F access=A pages=N fetches=K seconds=S cpu-seconds=C
// mismatches=M waits=... wait-p50-ns=..." (waits over 2 µs, as pager-workload counts them).
#include "floor.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

struct naive {
    int uffd, socket, stop;
    unsigned char *region, *buffer, *fetched;
    uint64_t bytes, block;
    long fetches;
};

static void wake(int uffd, uint64_t address) {
    struct uffdio_range r = {.start = address & ~(uint64_t)(FLOOR_PAGE - 1), .len = FLOOR_PAGE};
    if (ioctl(uffd, UFFDIO_WAKE, &r) < 0) floor_die("UFFDIO_WAKE");
}

static void resolve(struct naive *n, uint64_t address) {
    uint64_t offset = address - (uint64_t)(uintptr_t)n->region;
    uint64_t index = offset / n->block;
    if (n->fetched[index]) { // asked by a second thread, or reported twice: already local
        wake(n->uffd, address);
        return;
    }
    struct floor_request r = {.offset = index * n->block, .length = n->block};
    if (r.offset + r.length > n->bytes) r.length = n->bytes - r.offset;
    if (floor_write_full(n->socket, &r, sizeof(r)) < 0 || floor_read_full(n->socket, n->buffer, r.length) < 0)
        floor_die("the server closed the connection");
    struct uffdio_copy c = {.dst = (uint64_t)(uintptr_t)n->region + r.offset, .src = (uint64_t)(uintptr_t)n->buffer,
                            .len = r.length, .mode = 0};
    if (ioctl(n->uffd, UFFDIO_COPY, &c) < 0) {
        if (errno != EEXIST) floor_die("UFFDIO_COPY");
        wake(n->uffd, address);
    }
    n->fetched[index] = 1;
    n->fetches++;
}

static void *handle(void *arg) {
    struct naive *n = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = n->uffd, .events = POLLIN}, {.fd = n->stop, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            floor_die("poll");
        }
        if (p[1].revents) return NULL;
        struct uffd_msg msgs[16];
        ssize_t got = read(n->uffd, msgs, sizeof(msgs));
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            floor_die("read of the userfaultfd");
        }
        for (long i = 0; i < got / (ssize_t)sizeof(struct uffd_msg); i++)
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT) resolve(n, msgs[i].arg.pagefault.address);
    }
}

int floor_naive(int argc, char **argv) {
    if (argc != 8) floor_die("usage: pager-floor-c naive HOST PORT BYTES FILE FETCH_PAGES ACCESS SEED TOUCH_PAGES");
    struct naive n = {0};
    n.bytes = strtoull(argv[2], NULL, 10);
    long fetch = atol(argv[4]);
    if (n.bytes == 0 || n.bytes % FLOOR_PAGE != 0 || fetch < 1 || fetch > 512) floor_die("BYTES or FETCH_PAGES out of range");
    n.block = (uint64_t)fetch * FLOOR_PAGE;
    long pages = (long)(n.bytes / FLOOR_PAGE), count = 0;
    long touch = atol(argv[7]);
    long *order = floor_access_order(argv[5], pages, strtoull(argv[6], NULL, 10), &count);
    if (touch > 0 && touch < count) count = touch;
    n.region = floor_missing_region(n.bytes, &n.uffd);
    n.buffer = mmap(NULL, n.block, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    n.fetched = calloc((size_t)(n.bytes / n.block + 1), 1);
    n.stop = eventfd(0, EFD_CLOEXEC);
    uint64_t *waits = malloc(sizeof(uint64_t) * (size_t)(count + pages));
    if (n.buffer == MAP_FAILED || !n.fetched || n.stop < 0 || !waits) floor_die("setup");
    n.socket = floor_connect(argv[0], atoi(argv[1]));
    pthread_t handler;
    if (pthread_create(&handler, NULL, handle, &n) != 0) floor_die("pthread_create");

    long waited = 0;
    volatile unsigned char sink = 0;
    double cpu0 = floor_cpu_seconds();
    uint64_t t0 = floor_now_ns();
    for (long i = 0; i < count; i++) {
        uint64_t a = floor_now_ns();
        sink += n.region[(size_t)order[i] * FLOOR_PAGE + 8];
        uint64_t dt = floor_now_ns() - a;
        if (dt > 2000) waits[waited++] = dt;
    }
    if (touch == 0) {
        // A full run ends when every page is local: touch what the order left (working-set).
        for (long p = 0; p < pages; p++) {
            uint64_t a = floor_now_ns();
            sink += n.region[(size_t)p * FLOOR_PAGE + 8];
            uint64_t dt = floor_now_ns() - a;
            if (dt > 2000) waits[waited++] = dt;
        }
    }
    double seconds = (double)(floor_now_ns() - t0) / 1e9;
    double cpu = floor_cpu_seconds() - cpu0;
    uint64_t one = 1;
    if (write(n.stop, &one, sizeof(one)) != sizeof(one)) floor_die("write of the stop eventfd");
    pthread_join(handler, NULL);
    const unsigned char *want = floor_map_file(argv[3], n.bytes);
    long bad = touch == 0 ? floor_mismatches(n.region, want, NULL, pages) : floor_mismatches(n.region, want, order, count);
    printf("floor naive fetch-pages=%ld access=%s pages=%ld fetches=%ld seconds=%.6f cpu-seconds=%.6f mismatches=%ld", fetch, argv[5],
           touch == 0 ? pages : count, n.fetches, seconds, cpu, bad);
    floor_print_waits(waits, waited);
    printf("\n");
    return bad == 0 ? 0 : 1;
}
