/* Source mode (PAGER_TRACK_SOCKET): write tracking of the guest RAM mapping for pre-copy
 * rounds, and the fence that keeps a released source from running again (see preload.c). */
#include "preload_internal.h"

#include <errno.h>
#include <linux/magic.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* The mapping tracking and the fence cover; set once, before the thread starts. */
static struct {
    void *addr;
    size_t length;
    off_t offset;
    long page_size;
    int shared_fs; /* tmpfs or hugetlbfs: needs UFFD_FEATURE_WP_HUGETLBFS_SHMEM */
    int listener;
} tracked = { .listener = -1 };

/* The fence's userfaultfd, never closed and never read once set: see fence(). */
static int fence_uffd = -1;

int pager_source_offered(void) { return tracked.listener >= 0; }

/* Replies {"error": what: strerror} and returns. */
static void refuse(int s, const char *what) {
    char json[512];
    snprintf(json, sizeof json, "{\"error\":\"%s: %s\"}", what, strerror(errno));
    (void)pager_send_json(s, json, -1);
}

/* A userfaultfd registered in write-protect mode on the RAM mapping, or -1 (answered on `s`). */
static int write_protect_uffd(int s, unsigned long long features) {
    int uffd = pager_open_userfaultfd();
    if (uffd < 0) {
        refuse(s, "userfaultfd");
        return -1;
    }
    struct uffdio_api api = { .api = UFFD_API, .features = features | (tracked.shared_fs ? UFFD_FEATURE_WP_HUGETLBFS_SHMEM : 0) };
    struct uffdio_register reg = { .range = { .start = (uintptr_t)tracked.addr, .len = tracked.length }, .mode = UFFDIO_REGISTER_MODE_WP };
    if (ioctl(uffd, UFFDIO_API, &api) < 0) {
        refuse(s, features & UFFD_FEATURE_WP_ASYNC ? "UFFDIO_API with WP_ASYNC (the kernel needs 6.7 or later)" : "UFFDIO_API (write-protect)");
    } else if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
        refuse(s, errno == EBUSY ? "UFFDIO_REGISTER (write-protect) of the RAM mapping (another daemon still tracks it)"
                                 : "UFFDIO_REGISTER (write-protect) of the RAM mapping");
    } else {
        return uffd;
    }
    close(uffd);
    return -1;
}

/* 'T': a WP-async userfaultfd over the RAM mapping, handed to the daemon on `s`. */
static void serve_tracker(int s) {
    if (fence_uffd >= 0) {
        errno = EPERM;
        refuse(s, "the guest RAM is fenced (released to a destination): no more tracking");
        return;
    }
    int uffd = write_protect_uffd(s, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED);
    if (uffd < 0) return;
    char json[512];
    pager_mapping_json(json, sizeof json, tracked.addr, tracked.length, tracked.offset, tracked.page_size);
    (void)pager_send_json(s, json, uffd);
    dprintf(2, "pager-preload: guest RAM write tracking handed to a pager on %s\n", getenv("PAGER_TRACK_SOCKET"));
    close(uffd); /* the daemon holds the only reference now: closing it ends the tracking */
}

/* 'F': write-protects the whole RAM mapping for good. The daemon asks once QEMU's migration
 * has completed (the destination's guest may run from then on): a `cont` of this QEMU then
 * cannot change one byte of its RAM. A vCPU or device writing to it waits in the kernel on
 * this userfaultfd, which nobody reads or closes (this process keeps it, so neither the
 * daemon's exit nor its crash lifts the fence); only killing QEMU ends the wait. */
static void fence(int s) {
    char json[256];
    if (fence_uffd < 0) {
        int uffd = write_protect_uffd(s, 0);
        if (uffd < 0) return;
        struct uffdio_writeprotect wp = { .range = { .start = (uintptr_t)tracked.addr, .len = tracked.length },
                                          .mode = UFFDIO_WRITEPROTECT_MODE_WP };
        if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
            refuse(s, "UFFDIO_WRITEPROTECT of the RAM mapping");
            close(uffd);
            return;
        }
        fence_uffd = uffd;
        dprintf(2, "pager-preload: guest RAM fenced (write-protected for good): this QEMU cannot run its guest again\n");
    }
    snprintf(json, sizeof json, "{\"fenced\":true,\"size\":%zu}", tracked.length);
    (void)pager_send_json(s, json, -1);
}

static void *source_thread(void *unused) {
    (void)unused;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* QEMU's signals stay with QEMU's threads */
    for (;;) {
        int s = accept4(tracked.listener, NULL, NULL, SOCK_CLOEXEC);
        if (s < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            dprintf(2, "pager-preload: accept on PAGER_TRACK_SOCKET: %s; tracking and the fence are no longer offered\n", strerror(errno));
            return NULL;
        }
        /* The request: one byte, 'T' (tracking) or 'F' (fence). */
        char request = 0;
        ssize_t n;
        do n = read(s, &request, 1); while (n < 0 && errno == EINTR);
        if (n == 1 && request == 'T') {
            serve_tracker(s);
        } else if (n == 1 && request == 'F') {
            fence(s);
        } else {
            errno = EINVAL;
            refuse(s, "unknown request (send 'T' for write tracking or 'F' for the fence)");
        }
        /* One daemon at a time: wait until it hangs up. */
        char byte;
        while (read(s, &byte, 1) > 0) {}
        close(s);
    }
}

void pager_offer_source(void *addr, size_t length, off_t offset, int fd, const char *path) {
    const char *socket_path = getenv("PAGER_TRACK_SOCKET");
    long fs_type;
    tracked.addr = addr;
    tracked.length = length;
    tracked.offset = offset;
    tracked.page_size = pager_ram_page_size(fd, path, &fs_type);
    tracked.shared_fs = fs_type == HUGETLBFS_MAGIC || fs_type == TMPFS_MAGIC;
    struct sockaddr_un sun = pager_unix_address(socket_path, "PAGER_TRACK_SOCKET");
    struct stat st;
    if (lstat(socket_path, &st) == 0 && S_ISSOCK(st.st_mode)) unlink(socket_path); /* a stale socket of an earlier run */
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(l, 4) < 0)
        pager_die("cannot listen on PAGER_TRACK_SOCKET %s: %s", socket_path, strerror(errno));
    tracked.listener = l;
    pthread_t t;
    int rc = pthread_create(&t, NULL, source_thread, NULL);
    if (rc != 0) pager_die("cannot start the source thread: %s", strerror(rc));
    pthread_detach(t);
    dprintf(2, "pager-preload: %s (%zu MiB at %p) can be write-tracked and fenced by a pager on %s\n", path, length >> 20, addr, socket_path);
}
