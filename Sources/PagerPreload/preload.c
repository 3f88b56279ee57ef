/*
 * pager-preload: lets an unmodified QEMU hand its guest RAM to the pager, on either host.
 *
 * Destination (post-copy):
 *   LD_PRELOAD=libpager-preload.so PAGER_RAM_PATH=/dev/shm/vm.ram PAGER_UFFD_SOCKET=/run/pager.sock \
 *       qemu-system-x86_64 -object memory-backend-file,id=ram0,size=...,mem-path=/dev/shm/vm.ram,share=on ...
 *
 * Source (write tracking for pre-copy rounds, and the fence):
 *   LD_PRELOAD=libpager-preload.so PAGER_RAM_PATH=/dev/shm/vm.ram PAGER_TRACK_SOCKET=/run/pager-track.sock \
 *       qemu-system-x86_64 ...
 *
 * With both sockets set (one domain definition for every host, as libvirt migrates it) the
 * command line decides: a QEMU started with -incoming is a destination, any other a source.
 *
 * It interposes mmap and mmap64 and touches nothing but mappings of the one file named by
 * PAGER_RAM_PATH.
 *
 * Destination (destination.c): when QEMU maps that file it registers a userfaultfd (MISSING
 * mode) on the mapping and hands it to the pager over PAGER_UFFD_SOCKET in Firecracker's
 * format (one JSON array of {"base_host_virt_addr","size","offset","page_size"}, the
 * descriptor attached with SCM_RIGHTS), then returns the mapping. From then on every first
 * touch of a guest page waits for the pager to fetch it from the source. A guest must never
 * run on zero pages, so every failure stops QEMU at once with a message (exit status 78): a
 * private mapping, `prealloc=on` (QEMU would touch every page before the source has
 * stopped), a RAM file that already holds data, a userfaultfd or socket error, no pager.
 *
 * Source (source.c): it listens on PAGER_TRACK_SOCKET (a thread with every signal blocked).
 * A connection sends one request byte:
 *   'T'  a fresh userfaultfd registered in write-protect mode with UFFD_FEATURE_WP_ASYNC on
 *        the RAM mapping, in the same format: the daemon finds the pages the guest writes
 *        with PAGEMAP_SCAN, and the kernel resolves every write by itself (QEMU never waits
 *        on the daemon). The library keeps no copy, so tracking ends when the daemon closes it.
 *   'F'  the fence: the whole mapping write-protected for good on a userfaultfd this library
 *        keeps, answered {"fenced":true,"size":N}. pagerd asks once the migration has
 *        completed: a resumed source cannot change its RAM (its vCPUs wait in the kernel),
 *        the library kills its QEMU at the first such write, and pagerd kills it on RESUME.
 * A failure is answered with {"error": "..."} and leaves QEMU running untouched.
 *
 * Without PAGER_RAM_PATH the library does nothing.
 */
#include "preload_internal.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);

/* Whether `fd` is the file named by PAGER_RAM_PATH (same device and inode). */
static int is_ram_file(int fd, const char *path) {
    struct stat a, b;
    if (fd < 0 || fstat(fd, &a) < 0 || stat(path, &b) < 0) return 0;
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* Destination (1) or source (0) mode; see the top of this file. */
static int destination_mode(void) {
    const char *track = getenv("PAGER_TRACK_SOCKET"), *uffd_socket = getenv("PAGER_UFFD_SOCKET");
    int has_track = track && *track, has_uffd = uffd_socket && *uffd_socket;
    if (has_track && has_uffd) return pager_cmdline_has_argument("-incoming") || pager_cmdline_has_argument("--incoming");
    if (has_uffd) return 1;
    if (has_track) return 0;
    pager_die("PAGER_RAM_PATH is set but neither PAGER_UFFD_SOCKET (destination) nor PAGER_TRACK_SOCKET (source) is");
}

static void *interpose(const char *name, void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    static mmap_fn real_mmap;
    if (!real_mmap) {
        real_mmap = (mmap_fn)dlsym(RTLD_NEXT, "mmap");
        if (!real_mmap) pager_die("dlsym(mmap): %s", dlerror());
    }
    const char *path = getenv("PAGER_RAM_PATH");
    if (!path || !*path || !is_ram_file(fd, path)) return real_mmap(addr, length, prot, flags, fd, offset);
    if (pager_handed_over() || pager_source_offered())
        pager_die("%s is mapped a second time (%s); one mapping of guest RAM is supported", path, name);
    if (!(flags & MAP_SHARED)) pager_die("%s is mapped privately: give QEMU share=on", path);
    int destination = destination_mode();
    void *mapped = real_mmap(addr, length, prot, flags, fd, offset);
    if (mapped == MAP_FAILED) return mapped;
    if (destination)
        pager_hand_over(mapped, length, offset, fd, path);
    else
        pager_offer_source(mapped, length, offset, fd, path, 0);
    return mapped;
}

__attribute__((visibility("default"))) void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    return interpose("mmap", addr, length, prot, flags, fd, offset);
}

__attribute__((visibility("default"))) void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    return interpose("mmap64", addr, length, prot, flags, fd, offset);
}
