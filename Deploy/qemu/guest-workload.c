/*
 * The test guest's workload (static, runs as /init's child in a busybox initramfs).
 *
 * Fills MIB MiB with a known pattern, then loops for ever: rewrite a few random pages (each
 * page's content is derived from its number and its own version counter), then verify every
 * page. Prints one line per pass on the serial console:
 *   pass N ok pages=P rewrites=R pass-ms=T max-gap-ms=G
 * or, on the first wrong word of a pass:
 *   pass N MISMATCH page P word W got X expected Y
 * `max-gap-ms` is the longest time between two consecutive progress checks during the pass,
 * as the guest's own clock saw it: a migration's pause shows up there.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t word(uint64_t page, uint64_t w, uint64_t version) {
    uint64_t x = page * 0x9E3779B97F4A7C15ull ^ w * 0xD6E8FEB86659FD93ull ^ version * 0xA0761D6478BD642Full;
    x ^= x >> 31;
    return x;
}

int main(int argc, char **argv) {
    uint64_t mib = argc > 1 ? strtoull(argv[1], 0, 10) : 128;
    uint64_t pages = mib << 8, words = 4096 / 8;
    uint64_t *mem = mmap(0, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    uint32_t *version = calloc(pages, sizeof(uint32_t));
    if (mem == MAP_FAILED || !version) { printf("guest-workload: cannot allocate %llu MiB\n", (unsigned long long)mib); return 1; }
    for (uint64_t p = 0; p < pages; p++)
        for (uint64_t w = 0; w < words; w++) mem[p * words + w] = word(p, w, 0);
    printf("guest-workload: filled %llu MiB\n", (unsigned long long)mib);
    fflush(stdout);
    uint64_t x = 88172645463325252ull, rewrites = 0;
    for (uint64_t pass = 1;; pass++) {
        uint64_t start = now_ns(), last = start, gap = 0;
        int bad = 0;
        for (int i = 0; i < 64; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            uint64_t p = x % pages;
            version[p]++;
            for (uint64_t w = 0; w < words; w++) mem[p * words + w] = word(p, w, version[p]);
            rewrites++;
        }
        for (uint64_t p = 0; p < pages && !bad; p++) {
            for (uint64_t w = 0; w < words; w++) {
                uint64_t expected = word(p, w, version[p]), got = mem[p * words + w];
                if (got != expected) {
                    printf("pass %llu MISMATCH page %llu word %llu got %016llx expected %016llx\n", (unsigned long long)pass,
                           (unsigned long long)p, (unsigned long long)w, (unsigned long long)got, (unsigned long long)expected);
                    bad = 1;
                    break;
                }
            }
            if ((p & 255) == 255) {
                uint64_t t = now_ns();
                if (t - last > gap) gap = t - last;
                last = t;
            }
        }
        uint64_t end = now_ns();
        if (!bad)
            printf("pass %llu ok pages=%llu rewrites=%llu pass-ms=%llu max-gap-ms=%llu\n", (unsigned long long)pass, (unsigned long long)pages,
                   (unsigned long long)rewrites, (unsigned long long)((end - start) / 1000000), (unsigned long long)(gap / 1000000));
        fflush(stdout);
    }
}
