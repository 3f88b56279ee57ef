/*
 * pager-preload: lets an unmodified QEMU hand its guest RAM to the pager, on either host.
 *
 * Destination (post-copy):
 *   LD_PRELOAD=libpager-preload.so PAGER_RAM_PATH=/dev/shm/vm.ram PAGER_UFFD_SOCKET=/run/pager.sock \
 *       qemu-system-x86_64 -object memory-backend-file,id=ram0,size=...,mem-path=/dev/shm/vm.ram,share=on ...
 *
 * Source (optional pre-copy rounds before the switch):
 *   LD_PRELOAD=libpager-preload.so PAGER_RAM_PATH=/dev/shm/vm.ram PAGER_TRACK_SOCKET=/run/pager-track.sock \
 *       qemu-system-x86_64 ...
 *
 * It interposes mmap and mmap64 and touches nothing but mappings of the one file named by
 * PAGER_RAM_PATH.
 *
 * With PAGER_UFFD_SOCKET, when QEMU maps that file it registers a userfaultfd (MISSING mode)
 * on the mapping and hands it to the pager over PAGER_UFFD_SOCKET in Firecracker's format
 * (one JSON array of {"base_host_virt_addr","size","offset","page_size"}, the descriptor
 * attached with SCM_RIGHTS), then returns the mapping. From then on every first touch of a
 * guest page waits for the pager to fetch it from the source. A guest must never run on zero
 * pages, so every failure stops QEMU at once with a message (exit status 78): a private
 * mapping, `prealloc=on` (QEMU would touch every page before the source has stopped), a RAM
 * file that already holds data, a userfaultfd or socket error.
 *
 * With PAGER_TRACK_SOCKET, it listens on that Unix socket (a thread with every signal
 * blocked). Each connection (`pagerd qemu-source --track-socket`) gets a fresh userfaultfd
 * registered in write-protect mode with UFFD_FEATURE_WP_ASYNC on the RAM mapping, in the same
 * format: the daemon finds the pages the guest writes with PAGEMAP_SCAN, and the kernel
 * resolves every write by itself (QEMU never waits on the daemon). The library keeps no copy
 * of that descriptor, so the tracking ends when the daemon closes it. A failure to set up a
 * tracker is answered with {"error": "..."} and leaves QEMU running untouched.
 *
 * Without PAGER_RAM_PATH the library does nothing.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/userfaultfd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);

/* The handoff connection stays open while QEMU runs: the pager closes it when all is local. */
static int handoff_socket = -1;
static int handoff_uffd = -1;

static void die(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dprintf(2, "pager-preload: FATAL: %s; stopping QEMU so the guest never runs on missing memory\n", msg);
    _exit(78);
}

/* Whether `fd` is the file named by PAGER_RAM_PATH (same device and inode). */
static int is_ram_file(int fd, const char *path) {
    struct stat a, b;
    if (fd < 0 || fstat(fd, &a) < 0 || stat(path, &b) < 0) return 0;
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

static int cmdline_has(const char *needle) {
    char buf[65536];
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    for (ssize_t i = 0; i < n; i++) if (buf[i] == 0) buf[i] = ' ';
    buf[n] = 0;
    return strstr(buf, needle) != NULL;
}

/* The RAM file's filesystem (statfs f_type) and page size: hugetlbfs pages, else 4 KiB. */
static long ram_page_size(int fd, const char *path, long *fs_type) {
    struct statfs fs;
    if (fstatfs(fd, &fs) < 0) die("fstatfs(%s): %s", path, strerror(errno));
    *fs_type = (long)fs.f_type;
    return fs.f_type == HUGETLBFS_MAGIC ? (long)fs.f_bsize : 4096;
}

/* The address of the Unix socket named by environment variable `name` (its value `path`). */
static struct sockaddr_un unix_address(const char *path, const char *name) {
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sun.sun_path) die("%s path too long", name);
    strcpy(sun.sun_path, path);
    return sun;
}

/* One mapping in Firecracker's handoff format. */
static int mapping_json(char *json, size_t size, void *addr, size_t length, off_t offset, long page_size) {
    return snprintf(json, size, "[{\"base_host_virt_addr\":%lu,\"size\":%zu,\"offset\":%lld,\"page_size\":%ld}]",
                    (unsigned long)(uintptr_t)addr, length, (long long)offset, page_size);
}

/* Sends `json`, with descriptor `fd` attached (SCM_RIGHTS) unless it is -1; returns sendmsg's result. */
static ssize_t send_json(int s, const char *json, int fd) {
    char control[CMSG_SPACE(sizeof(int))];
    memset(control, 0, sizeof control);
    struct iovec iov = { .iov_base = (void *)json, .iov_len = strlen(json) };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (fd >= 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    return sendmsg(s, &msg, MSG_NOSIGNAL);
}

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* A userfaultfd: the system call, or, where it is not permitted (QEMU as an unprivileged user
 * with vm.unprivileged_userfaultfd=0), /dev/userfaultfd, which the administrator grants by its
 * group (the pager's udev rule: group kvm, mode 0660). -1 with errno set if neither works. */
static int open_userfaultfd(void) {
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd >= 0 || errno != EPERM) return uffd;
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) {
        errno = EPERM;
        return -1;
    }
    uffd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    int saved = errno;
    close(dev);
    errno = saved;
    return uffd;
}

static void hand_over(void *addr, size_t length, off_t offset, int fd, const char *path) {
    const char *socket_path = getenv("PAGER_UFFD_SOCKET");
    if (!socket_path || !*socket_path) die("PAGER_RAM_PATH is set but PAGER_UFFD_SOCKET is not");
    long fs_type;
    long page_size = ram_page_size(fd, path, &fs_type);
    int hugetlb = fs_type == HUGETLBFS_MAGIC;

    int uffd = open_userfaultfd();
    if (uffd < 0) die("userfaultfd: %s (as root, with read-write access to /dev/userfaultfd, or vm.unprivileged_userfaultfd=1)", strerror(errno));
    struct uffdio_api api = { .api = UFFD_API,
                              .features = (hugetlb ? UFFD_FEATURE_MISSING_HUGETLBFS : UFFD_FEATURE_MISSING_SHMEM)
                                          | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP };
    if (ioctl(uffd, UFFDIO_API, &api) < 0) die("UFFDIO_API: %s", strerror(errno));
    struct uffdio_register reg = { .range = { .start = (uintptr_t)addr, .len = length }, .mode = UFFDIO_REGISTER_MODE_MISSING };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) die("UFFDIO_REGISTER %p+%zu: %s", addr, length, strerror(errno));

    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = unix_address(socket_path, "PAGER_UFFD_SOCKET");
    if (s < 0 || connect(s, (struct sockaddr *)&sun, sizeof sun) < 0)
        die("cannot reach the pager at %s: %s (start pagerd qemu-dest first)", socket_path, strerror(errno));

    char json[256];
    int n = mapping_json(json, sizeof json, addr, length, offset, page_size);
    if (send_json(s, json, uffd) != n) die("sending the handoff to %s: %s", socket_path, strerror(errno));
    /* Kept open, never closed: if the pager dies, the registration stays and a fault waits
     * (the guest hangs, loudly) instead of the kernel filling missing pages with zeros. */
    handoff_uffd = uffd;
    handoff_socket = s;
    dprintf(2, "pager-preload: %s (%zu MiB at %p, %ld KiB pages) handed to the pager at %s\n", path, length >> 20, addr,
            page_size >> 10, socket_path);
}

/* The mapping write tracking covers (source mode); set once, before the thread starts. */
static struct {
    void *addr;
    size_t length;
    off_t offset;
    long page_size;
    int shared_fs; /* tmpfs or hugetlbfs: needs UFFD_FEATURE_WP_HUGETLBFS_SHMEM */
    int listener;
} tracked = { .listener = -1 };

/* One tracker: a WP-async userfaultfd over the RAM mapping, handed to the daemon on `s`. */
static void serve_tracker(int s) {
    char json[512];
    int uffd = open_userfaultfd();
    if (uffd < 0) {
        snprintf(json, sizeof json, "{\"error\":\"userfaultfd: %s\"}", strerror(errno));
        (void)send_json(s, json, -1);
        return;
    }
    struct uffdio_api api = { .api = UFFD_API,
                              .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED
                                          | (tracked.shared_fs ? UFFD_FEATURE_WP_HUGETLBFS_SHMEM : 0) };
    struct uffdio_register reg = { .range = { .start = (uintptr_t)tracked.addr, .len = tracked.length }, .mode = UFFDIO_REGISTER_MODE_WP };
    if (ioctl(uffd, UFFDIO_API, &api) < 0) {
        snprintf(json, sizeof json, "{\"error\":\"UFFDIO_API with WP_ASYNC: %s (the kernel needs 6.7 or later)\"}", strerror(errno));
        (void)send_json(s, json, -1);
    } else if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
        snprintf(json, sizeof json, "{\"error\":\"UFFDIO_REGISTER (write-protect) of the RAM mapping: %s%s\"}", strerror(errno),
                 errno == EBUSY ? " (another daemon still tracks it)" : "");
        (void)send_json(s, json, -1);
    } else {
        mapping_json(json, sizeof json, tracked.addr, tracked.length, tracked.offset, tracked.page_size);
        (void)send_json(s, json, uffd);
        dprintf(2, "pager-preload: guest RAM write tracking handed to a pager on %s\n", getenv("PAGER_TRACK_SOCKET"));
    }
    close(uffd); /* the daemon holds the only reference now: closing it ends the tracking */
}

static void *track_thread(void *unused) {
    (void)unused;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* QEMU's signals stay with QEMU's threads */
    for (;;) {
        int s = accept4(tracked.listener, NULL, NULL, SOCK_CLOEXEC);
        if (s < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            dprintf(2, "pager-preload: accept on PAGER_TRACK_SOCKET: %s; write tracking is no longer offered\n", strerror(errno));
            return NULL;
        }
        serve_tracker(s);
        /* One daemon at a time: wait until it hangs up. */
        char byte;
        while (read(s, &byte, 1) > 0) {}
        close(s);
    }
}

static void offer_tracking(void *addr, size_t length, off_t offset, int fd, const char *path) {
    const char *socket_path = getenv("PAGER_TRACK_SOCKET");
    long fs_type;
    tracked.addr = addr;
    tracked.length = length;
    tracked.offset = offset;
    tracked.page_size = ram_page_size(fd, path, &fs_type);
    tracked.shared_fs = fs_type == HUGETLBFS_MAGIC || fs_type == TMPFS_MAGIC;
    struct sockaddr_un sun = unix_address(socket_path, "PAGER_TRACK_SOCKET");
    struct stat st;
    if (lstat(socket_path, &st) == 0 && S_ISSOCK(st.st_mode)) unlink(socket_path); /* a stale socket of an earlier run */
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(l, 4) < 0)
        die("cannot listen on PAGER_TRACK_SOCKET %s: %s", socket_path, strerror(errno));
    tracked.listener = l;
    pthread_t t;
    int rc = pthread_create(&t, NULL, track_thread, NULL);
    if (rc != 0) die("cannot start the write-tracking thread: %s", strerror(rc));
    pthread_detach(t);
    dprintf(2, "pager-preload: %s (%zu MiB at %p) can be write-tracked by a pager on %s\n", path, length >> 20, addr, socket_path);
}

static void *interpose(const char *name, void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    static mmap_fn real_mmap;
    if (!real_mmap) {
        real_mmap = (mmap_fn)dlsym(RTLD_NEXT, "mmap");
        if (!real_mmap) die("dlsym(mmap): %s", dlerror());
    }
    const char *path = getenv("PAGER_RAM_PATH");
    if (!path || !*path || !is_ram_file(fd, path)) return real_mmap(addr, length, prot, flags, fd, offset);
    const char *track = getenv("PAGER_TRACK_SOCKET"), *uffd_socket = getenv("PAGER_UFFD_SOCKET");
    if (track && *track) {
        if (uffd_socket && *uffd_socket) die("set PAGER_UFFD_SOCKET (destination) or PAGER_TRACK_SOCKET (source), not both");
        if (tracked.listener >= 0) die("%s is mapped a second time (%s); one mapping of guest RAM is supported", path, name);
        if (!(flags & MAP_SHARED)) die("%s is mapped privately: give QEMU share=on", path);
        void *mapped = real_mmap(addr, length, prot, flags, fd, offset);
        if (mapped == MAP_FAILED) return mapped;
        offer_tracking(mapped, length, offset, fd, path);
        return mapped;
    }
    if (handoff_socket >= 0) die("%s is mapped a second time (%s); one mapping of guest RAM is supported", path, name);
    if (!(flags & MAP_SHARED)) die("%s is mapped privately: give QEMU share=on", path);
    if (cmdline_has("prealloc=on"))
        die("prealloc=on makes QEMU touch every page of %s before the source has stopped: remove it", path);
    /* A file that already holds data would be mapped as it is, and the guest would run on it. */
    /* hugetlbfs has no SEEK_DATA (the whole size reads as data) but counts its pages in st_blocks. */
    struct stat st;
    long fs_type;
    (void)ram_page_size(fd, path, &fs_type);
    int hugetlb = fs_type == HUGETLBFS_MAGIC;
    if (hugetlb ? (fstat(fd, &st) < 0 || st.st_blocks != 0) : (lseek(fd, 0, SEEK_DATA) >= 0 || errno != ENXIO))
        die("%s already holds data: give the destination an empty RAM file", path);
    void *mapped = real_mmap(addr, length, prot, flags, fd, offset);
    if (mapped == MAP_FAILED) return mapped;
    hand_over(mapped, length, offset, fd, path);
    return mapped;
}

void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    return interpose("mmap", addr, length, prot, flags, fd, offset);
}

void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    return interpose("mmap64", addr, length, prot, flags, fd, offset);
}
