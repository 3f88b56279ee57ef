// The local userfaultfd fault micro-benchmark in plain C: the baseline pager-bench compares
// the Swift kernel layer against (same algorithm, same system calls, same run).
//
// usage: uffd-fault-bench-c PAGES CPU_TOUCH CPU_HANDLER
// Prints one line: "c pages=N p50_ns=.. p90_ns=.. p99_ns=.. mean_ns=.."
//
// A thread touches each page of a MISSING-registered anonymous region in order; a handler
// thread polls the userfaultfd, reads the fault and resolves it with UFFDIO_COPY of one
// prepared 4 KiB page. The time of each touch is the fault's full round trip.
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int uffd;
static long pages;
static int handler_cpu;
static char *source;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *handler(void *arg) {
    (void)arg;
    pin(handler_cpu);
    for (long served = 0; served < pages;) {
        struct pollfd pfd = {.fd = uffd, .events = POLLIN};
        if (poll(&pfd, 1, -1) < 0) continue;
        struct uffd_msg msgs[64];
        ssize_t n = read(uffd, msgs, sizeof(msgs));
        if (n <= 0) continue;
        for (long i = 0; i < n / (ssize_t)sizeof(struct uffd_msg); i++) {
            if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
            struct uffdio_copy c = {.dst = msgs[i].arg.pagefault.address & ~4095ull,
                                    .src = (uint64_t)(uintptr_t)source, .len = 4096, .mode = 0};
            if (ioctl(uffd, UFFDIO_COPY, &c) < 0 && errno != EEXIST) {
                perror("UFFDIO_COPY");
                exit(1);
            }
            served++;
        }
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PAGES CPU_TOUCH CPU_HANDLER\n", argv[0]);
        return 2;
    }
    pages = atol(argv[1]);
    int touch_cpu = atoi(argv[2]);
    handler_cpu = atoi(argv[3]);
    size_t len = (size_t)pages * 4096;
    char *region = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    source = aligned_alloc(4096, 4096);
    if (region == MAP_FAILED || !source) return 1;
    memset(source, 0x5A, 4096);
    // Back the guest memory with host memory first, so we measure the fault path, not the hypervisor.
    memset(region, 1, len);
    madvise(region, len, MADV_DONTNEED);

    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    struct uffdio_api api = {.api = UFFD_API};
    struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)region, .len = len},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) < 0 || ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
        perror("userfaultfd");
        return 1;
    }
    pin(touch_cpu);
    pthread_t t;
    pthread_create(&t, NULL, handler, NULL);
    uint64_t *lat = malloc(sizeof(uint64_t) * (size_t)pages);
    unsigned long sum = 0;
    for (long i = 0; i < pages; i++) {
        uint64_t t0 = now_ns();
        sum += *(volatile char *)(region + i * 4096);
        lat[i] = now_ns() - t0;
    }
    pthread_join(t, NULL);
    if (sum != (unsigned long)pages * 0x5A) {
        fprintf(stderr, "content check failed\n");
        return 1;
    }
    qsort(lat, (size_t)pages, sizeof(uint64_t), cmp);
    double mean = 0;
    for (long i = 0; i < pages; i++) mean += (double)lat[i];
    printf("c pages=%ld p50_ns=%lu p90_ns=%lu p99_ns=%lu mean_ns=%.0f\n", pages, (unsigned long)lat[pages / 2],
           (unsigned long)lat[pages * 9 / 10], (unsigned long)lat[pages * 99 / 100], mean / (double)pages);
    return 0;
}
