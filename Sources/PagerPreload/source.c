/* Source mode (PAGER_TRACK_SOCKET): write tracking of the guest RAM mapping for pre-copy
 * rounds, and the fence that keeps a released source from running again (see preload.c). */
#include "preload_internal.h"

#include <errno.h>
#include <linux/magic.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

/* The mapping tracking and the fence cover; set once, before the thread starts. */
static struct {
    void *addr;
    size_t length;
    off_t offset;
    long page_size;
    int shared_fs; /* tmpfs or hugetlbfs: needs UFFD_FEATURE_WP_HUGETLBFS_SHMEM */
    int listener;
    int arrived;  /* the mapping came from a pager (destination.c): fence only, once complete */
    int complete; /* arrived: the pager said every page is local ({"all_local":true}) */
} tracked = { .listener = -1 };

/* The fence's userfaultfd, never closed once set; read only by fence_thread: see fence(). */
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

/* An arrived mapping is complete once the pager has written {"all_local":true} on the
 * handoff connection (Protocols/handoff.md, section 4); read here, without waiting. */
static int arrival_complete(void) {
    static const char marker[] = "\"all_local\":true";
    static char carry[32]; /* the end of the last read: the marker may span two */
    static size_t carried;
    while (tracked.arrived && !tracked.complete) {
        char buf[4096 + sizeof carry];
        memcpy(buf, carry, carried);
        ssize_t n = recv(pager_handoff_socket(), buf + carried, 4096, MSG_DONTWAIT);
        if (n <= 0) break; /* nothing more now, or the pager has gone: as complete as it was */
        size_t length = carried + (size_t)n;
        buf[length] = 0;
        if (strstr(buf, marker)) tracked.complete = 1;
        carried = length < sizeof carry - 1 ? length : sizeof carry - 1;
        memmove(carry, buf + length - carried, carried);
    }
    return !tracked.arrived || tracked.complete;
}

/* 'S': where this mapping's memory is: booted here, or arrived (complete or not yet). */
static void serve_state(int s) {
    char json[128];
    if (!tracked.arrived)
        snprintf(json, sizeof json, "{\"state\":\"booted\"}");
    else
        snprintf(json, sizeof json, "{\"state\":\"arrived\",\"complete\":%s}", arrival_complete() ? "true" : "false");
    (void)pager_send_json(s, json, -1);
}

/* 'T': a WP-async userfaultfd over the RAM mapping, handed to the daemon on `s`. */
static void serve_tracker(int s) {
    if (fence_uffd >= 0) {
        errno = EPERM;
        refuse(s, "the guest RAM is fenced (released to a destination): no more tracking");
        return;
    }
    if (tracked.arrived) {
        errno = EBUSY;
        refuse(s, "this guest RAM arrived with the pager and its mapping stays registered for the pager's faults: write tracking needs a restarted QEMU");
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

/* Reads the fence's userfaultfd: the first write to fenced RAM (a vCPU or device of a QEMU
 * resumed after its guest went to a destination) kills this QEMU, loudly, without waiting
 * for pagerd's watch on QMP (which ends with the daemon). The write itself never happens:
 * it waits in the kernel, and nothing here resolves it. */
static void *fence_thread(void *unused) {
    (void)unused;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        struct pollfd p = { .fd = fence_uffd, .events = POLLIN };
        if (poll(&p, 1, -1) < 0) continue;
        struct uffd_msg msg;
        if (read(fence_uffd, &msg, sizeof msg) != (ssize_t)sizeof msg) continue;
        /* Other events (an arrived mapping's pager may have asked for them) are let pass. A
         * missing-page fault (an arrived mapping: a hole punched since) would wait for good. */
        if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
        dprintf(2, "pager-preload: FATAL: %s the fenced guest RAM (at 0x%llx): this QEMU runs again after its guest went to a destination; killing it so that the guest never runs twice\n",
                msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP ? "a write to" : "an access to a missing page of", (unsigned long long)msg.arg.pagefault.address);
        kill(getpid(), SIGKILL);
    }
    return NULL;
}

/* 'F': write-protects the whole RAM mapping for good. The daemon asks once QEMU's migration
 * has completed (the destination's guest may run from then on): a `cont` of this QEMU then
 * cannot change one byte of its RAM. A vCPU or device writing to it waits in the kernel on
 * this userfaultfd, which this process keeps (neither the daemon's exit nor its crash lifts
 * the fence) and which fence_thread reads to kill QEMU at the first such write. */
static void fence(int s) {
    char json[256];
    if (fence_uffd < 0 && tracked.arrived) {
        if (!arrival_complete()) {
            errno = EAGAIN;
            refuse(s, "this guest RAM is still arriving from its previous host (the pager has not said every page is local)");
            return;
        }
        /* The pager's own userfaultfd (a second one cannot register the mapping): missing
         * mode kept, write-protect added. Nobody reads it any more once all is local. */
        int uffd = pager_handoff_uffd();
        struct uffdio_register reg = { .range = { .start = (uintptr_t)tracked.addr, .len = tracked.length },
                                       .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP };
        struct uffdio_writeprotect wp = { .range = reg.range, .mode = UFFDIO_WRITEPROTECT_MODE_WP };
        if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
            refuse(s, "UFFDIO_REGISTER (write-protect) of the arrived RAM mapping");
            return;
        }
        if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
            refuse(s, "UFFDIO_WRITEPROTECT of the RAM mapping");
            return;
        }
        fence_uffd = uffd;
        dprintf(2, "pager-preload: guest RAM fenced (write-protected for good): this QEMU cannot run its guest again\n");
    } else if (fence_uffd < 0) {
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
    static int watching;
    if (!watching) {
        pthread_t t;
        int rc = pthread_create(&t, NULL, fence_thread, NULL);
        if (rc == 0) {
            pthread_detach(t);
            watching = 1;
        } else {
            dprintf(2, "pager-preload: cannot start the fence's watch thread (%s): the fence holds, but only pagerd's watch on QMP kills a resumed QEMU\n", strerror(rc));
        }
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
        /* Only root (pagerd) may ask: another process of QEMU's user (every QEMU libvirt
         * runs is libvirt-qemu) must not freeze this guest with a fence. */
        struct ucred peer;
        socklen_t peer_size = sizeof peer;
        if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &peer, &peer_size) < 0 || peer.uid != 0) {
            errno = EACCES;
            refuse(s, "only root (pagerd) may use this socket");
            close(s);
            continue;
        }
        /* The request: one byte, 'S' (state), 'T' (tracking) or 'F' (fence), within 10 s:
         * a client that connects and says nothing must not keep the fence from the daemon. */
        struct timeval patience = { .tv_sec = 10 }, forever = { 0 };
        (void)setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
        char request = 0;
        ssize_t n;
        do n = read(s, &request, 1); while (n < 0 && errno == EINTR);
        (void)setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &forever, sizeof forever);
        if (n == 1 && request == 'T') {
            serve_tracker(s);
        } else if (n == 1 && request == 'F') {
            fence(s);
        } else if (n == 1 && request == 'S') {
            serve_state(s);
        } else {
            errno = EINVAL;
            refuse(s, "unknown request (send 'S' for the state, 'T' for write tracking or 'F' for the fence)");
        }
        /* One tracking daemon at a time: wait until it hangs up. Other answers are final. */
        if (n == 1 && request == 'T') {
            char byte;
            while (read(s, &byte, 1) > 0) {}
        }
        close(s);
    }
}

void pager_offer_source(void *addr, size_t length, off_t offset, int fd, const char *path, int arrived) {
    const char *socket_path = getenv("PAGER_TRACK_SOCKET");
    long fs_type;
    tracked.addr = addr;
    tracked.length = length;
    tracked.offset = offset;
    tracked.page_size = pager_ram_page_size(fd, path, &fs_type);
    tracked.shared_fs = fs_type == HUGETLBFS_MAGIC || fs_type == TMPFS_MAGIC;
    tracked.arrived = arrived;
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
    if (arrived)
        dprintf(2, "pager-preload: %s can be fenced by a pager on %s once every page has arrived\n", path, socket_path);
    else
        dprintf(2, "pager-preload: %s (%zu MiB at %p) can be write-tracked and fenced by a pager on %s\n", path, length >> 20, addr, socket_path);
}
