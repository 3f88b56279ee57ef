// The orders pager-workload touches pages in, with the same generator (a xorshift64 shuffle
// seeded with seed | 1), so the naive pager sees exactly the pager's access sequence.
#include "floor.h"

#include <stdlib.h>
#include <string.h>

static void shuffle(long *a, long n, uint64_t *x) {
    for (long i = n - 1; i > 0; i--) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        long j = (long)(*x % (uint64_t)(i + 1));
        long t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

long *floor_access_order(const char *access, long pages, uint64_t seed, long *count) {
    uint64_t x = seed | 1;
    long *order = malloc(sizeof(long) * (size_t)pages * 5);
    if (!order) floor_die("malloc");
    for (long p = 0; p < pages; p++) order[p] = p;
    *count = pages;
    if (strcmp(access, "sequential") == 0 || strcmp(access, "none") == 0) return order;
    if (strcmp(access, "random") == 0) {
        shuffle(order, pages, &x);
        return order;
    }
    if (strcmp(access, "strided") == 0) {
        const long step = 67; // pages: a prime, so every page is visited once (as the workload)
        long n = 0;
        for (long start = 0; start < step; start++)
            for (long p = start; p < pages; p += step) order[n++] = p;
        return order;
    }
    if (strcmp(access, "working-set") == 0) {
        shuffle(order, pages, &x);
        long set = pages / 10 > 1 ? pages / 10 : 1;
        long *hot = malloc(sizeof(long) * (size_t)set);
        if (!hot) floor_die("malloc");
        memcpy(hot, order, sizeof(long) * (size_t)set);
        long n = 0;
        for (int round = 0; round < 5; round++) {
            shuffle(hot, set, &x);
            memcpy(order + n, hot, sizeof(long) * (size_t)set);
            n += set;
        }
        free(hot);
        *count = n;
        return order;
    }
    floor_die("unknown access pattern (sequential, random, strided, working-set, none)");
}
