// The wire floor and the copy floor: receive the served file as one stream in 2 MiB reads into
// one buffer; with "install", UFFDIO_COPY each 2 MiB into a fresh registered region (what
// any pager must at least do for a full transfer), then check every page outside the timing.
//
// usage: pager-floor-c stream wire|install HOST PORT BYTES FILE [READ_BYTES]
//   READ_BYTES: the size of each read and install (default and at most 2 MiB; a power of two).
// Prints "floor stream mode=M bytes=N seconds=S cpu-seconds=C mismatches=K".
#include "floor.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

int floor_stream(int argc, char **argv) {
    if (argc != 5 && argc != 6) floor_die("usage: pager-floor-c stream wire|install HOST PORT BYTES FILE [READ_BYTES]");
    uint64_t chunk = argc == 6 ? strtoull(argv[5], NULL, 10) : FLOOR_CHUNK;
    if (chunk < FLOOR_PAGE || chunk > FLOOR_CHUNK || (chunk & (chunk - 1)) != 0) floor_die("READ_BYTES: a power of two from 4 KiB to 2 MiB");
    int install = strcmp(argv[0], "install") == 0;
    if (!install && strcmp(argv[0], "wire") != 0) floor_die("stream mode is wire or install");
    uint64_t bytes = strtoull(argv[3], NULL, 10);
    if (bytes == 0 || bytes % FLOOR_CHUNK != 0) floor_die("BYTES must be a multiple of 2 MiB");
    int uffd = -1;
    unsigned char *region = install ? floor_missing_region(bytes, &uffd) : NULL;
    unsigned char *buffer = mmap(NULL, FLOOR_CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (buffer == MAP_FAILED) floor_die("mmap");
    int fd = floor_connect(argv[1], atoi(argv[2]));
    struct floor_request r = {.offset = FLOOR_STREAM, .length = bytes};
    double cpu0 = floor_cpu_seconds();
    uint64_t t0 = floor_now_ns();
    if (floor_write_full(fd, &r, sizeof(r)) < 0) floor_die("send");
    for (uint64_t at = 0; at < bytes; at += chunk) {
        if (floor_read_full(fd, buffer, chunk) < 0) floor_die("the server closed the stream");
        if (!install) continue;
        struct uffdio_copy c = {.dst = (uint64_t)(uintptr_t)(region + at), .src = (uint64_t)(uintptr_t)buffer,
                                .len = chunk, .mode = UFFDIO_COPY_MODE_DONTWAKE};
        if (ioctl(uffd, UFFDIO_COPY, &c) < 0) floor_die("UFFDIO_COPY");
    }
    double seconds = (double)(floor_now_ns() - t0) / 1e9;
    double cpu = floor_cpu_seconds() - cpu0;
    long bad = install ? floor_mismatches(region, floor_map_file(argv[4], bytes), NULL, (long)(bytes / FLOOR_PAGE)) : 0;
    printf("floor stream mode=%s read-bytes=%llu bytes=%llu seconds=%.6f cpu-seconds=%.6f mismatches=%ld\n", argv[0], (unsigned long long)chunk, (unsigned long long)bytes,
           seconds, cpu, bad);
    return bad == 0 ? 0 : 1;
}
