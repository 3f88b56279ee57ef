/* Destination mode (PAGER_UFFD_SOCKET): QEMU's guest RAM mapping, registered for missing
 * pages, handed to pagerd qemu-dest (see preload.c). */
#include "preload_internal.h"

#include <errno.h>
#include <linux/magic.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* The handoff connection stays open while QEMU runs: the pager closes it when all is local. */
static int handoff_socket = -1;
static int handoff_uffd = -1;

int pager_handed_over(void) { return handoff_socket >= 0; }
int pager_handoff_socket(void) { return handoff_socket; }
int pager_handoff_uffd(void) { return handoff_uffd; }

/* A userfaultfd for missing pages of the mapping. With `fenceable` (PAGER_TRACK_SOCKET is set:
 * this QEMU may later be a migration's source) it can also write-protect a tmpfs or hugetlbfs
 * mapping, for the fence; a kernel without that feature gets one without it (no fence). */
static int missing_uffd(int hugetlb, int fenceable) {
    unsigned long long features = (hugetlb ? UFFD_FEATURE_MISSING_HUGETLBFS : UFFD_FEATURE_MISSING_SHMEM)
                                  | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP;
    for (int attempt = fenceable ? 0 : 1; attempt < 2; attempt++) {
        int uffd = pager_open_userfaultfd();
        if (uffd < 0) pager_die("userfaultfd: %s (as root, with read-write access to /dev/userfaultfd, or vm.unprivileged_userfaultfd=1)", strerror(errno));
        struct uffdio_api api = { .api = UFFD_API, .features = features | (attempt == 0 ? UFFD_FEATURE_WP_HUGETLBFS_SHMEM : 0) };
        if (ioctl(uffd, UFFDIO_API, &api) == 0) return uffd;
        int saved = errno;
        close(uffd);
        if (attempt == 1) {
            errno = saved;
            pager_die("UFFDIO_API: %s", strerror(errno));
        }
        dprintf(2, "pager-preload: this kernel cannot write-protect the RAM mapping (%s): no fence when this QEMU is a source\n", strerror(saved));
    }
    return -1;
}

/* A file that already holds data would be mapped as it is, and the guest would run on it. */
static void check_empty(int fd, const char *path, int hugetlb) {
    /* hugetlbfs has no SEEK_DATA (the whole size reads as data) but counts its pages in st_blocks. */
    struct stat st;
    if (hugetlb ? (fstat(fd, &st) < 0 || st.st_blocks != 0) : (lseek(fd, 0, SEEK_DATA) >= 0 || errno != ENXIO))
        pager_die("%s already holds data: give the destination an empty RAM file", path);
}

void pager_hand_over(void *addr, size_t length, off_t offset, int fd, const char *path) {
    const char *socket_path = getenv("PAGER_UFFD_SOCKET");
    if (!socket_path || !*socket_path) pager_die("PAGER_RAM_PATH is set but PAGER_UFFD_SOCKET is not");
    if (pager_cmdline_has("prealloc=on") || pager_cmdline_has("\"prealloc\":true") || pager_cmdline_has_argument("-mem-prealloc"))
        pager_die("preallocation (prealloc=on, \"prealloc\":true or -mem-prealloc) makes QEMU touch every page of %s before the source has stopped: remove it", path);
    long fs_type;
    long page_size = pager_ram_page_size(fd, path, &fs_type);
    int hugetlb = fs_type == HUGETLBFS_MAGIC;
    check_empty(fd, path, hugetlb);

    const char *track = getenv("PAGER_TRACK_SOCKET");
    int uffd = missing_uffd(hugetlb, track && *track);
    struct uffdio_register reg = { .range = { .start = (uintptr_t)addr, .len = length }, .mode = UFFDIO_REGISTER_MODE_MISSING };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) pager_die("UFFDIO_REGISTER %p+%zu: %s", addr, length, strerror(errno));

    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = pager_unix_address(socket_path, "PAGER_UFFD_SOCKET");
    if (s < 0 || connect(s, (struct sockaddr *)&sun, sizeof sun) < 0)
        pager_die("cannot reach the pager at %s: %s (start pagerd qemu-dest first)", socket_path, strerror(errno));

    char json[256];
    int n = pager_mapping_json(json, sizeof json, addr, length, offset, page_size);
    if (pager_send_json(s, json, uffd) != n) pager_die("sending the handoff to %s: %s", socket_path, strerror(errno));
    /* Kept open, never closed: if the pager dies, the registration stays and a fault waits
     * (the guest hangs, loudly) instead of the kernel filling missing pages with zeros. */
    handoff_uffd = uffd;
    handoff_socket = s;
    dprintf(2, "pager-preload: %s (%zu MiB at %p, %ld KiB pages) handed to the pager at %s\n", path, length >> 20, addr,
            page_size >> 10, socket_path);
    /* This guest may move on later: offer the fence (not tracking: the mapping is taken). */
    if (track && *track) pager_offer_source(addr, length, offset, fd, path, 1);
}
