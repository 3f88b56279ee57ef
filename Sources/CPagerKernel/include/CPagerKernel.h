// CPagerKernel: the C side of the kernel layer.
//
// Only headers, constants Swift cannot import (function-like ioctl macros), constants
// newer than Debian 12's 6.1 uapi headers, and one-line helpers around ioctl/syscall
// (both variadic, so Swift cannot call them). Every helper returns 0 or a value >= 0 on
// success and -errno on failure, with errno read immediately after the call that set it.
//
// PagerKernel wraps these in typed Swift; no other module includes this header.
#ifndef CPAGERKERNEL_H
#define CPAGERKERNEL_H

#include <features.h>
#include <errno.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/userfaultfd.h>
#include <linux/fs.h>
#include <sys/vfs.h>

#include "poison_guard.h"
#include "guardian.h"

// MARK: - Constants newer than the 6.1 headers (values from the kernel's uapi, 6.7+)

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
// An early patch series used 1 << 14; the merged value is 1 << 15.
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif

#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
struct uffdio_poison {
    struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
    __u64 mode;
    __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

#ifndef PAGEMAP_SCAN
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)
struct page_region {
    __u64 start;
    __u64 end;
    __u64 categories;
};
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
struct pm_scan_arg {
    __u64 size;
    __u64 flags;
    __u64 start;
    __u64 end;
    __u64 walk_end;
    __u64 vec;
    __u64 vec_len;
    __u64 max_pages;
    __u64 category_inverted;
    __u64 category_mask;
    __u64 category_anyof_mask;
    __u64 return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

_Static_assert(sizeof(struct pm_scan_arg) == 96, "pm_scan_arg is 96 bytes in the uapi");
_Static_assert(sizeof(struct page_region) == 24, "page_region is 24 bytes in the uapi");
_Static_assert(sizeof(struct uffd_msg) == 32, "uffd_msg is 32 bytes in the uapi");
_Static_assert(PAGEMAP_SCAN == 0xC0606610, "PAGEMAP_SCAN request number");

// Socket flags as plain values (glibc declares them in an enum that Swift's Glibc module
// does not always export).
#include <sys/socket.h>
static const int PAGER_MSG_WAITALL = MSG_WAITALL;
static const int PAGER_MSG_NOSIGNAL = MSG_NOSIGNAL;
static const int PAGER_MSG_DONTWAIT = MSG_DONTWAIT;

// Request numbers as plain values (the macros are function-like; Swift cannot import them).
static const unsigned long PAGER_PAGEMAP_SCAN = PAGEMAP_SCAN;
static const unsigned long PAGER_UFFDIO_COPY = UFFDIO_COPY;

// MARK: - userfaultfd creation

/// userfaultfd(2). flags: O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY.
static inline int pager_userfaultfd(int flags) {
    long r = syscall(__NR_userfaultfd, flags);
    return r < 0 ? -errno : (int)r;
}

/// ioctl(USERFAULTFD_IOC_NEW) on an open /dev/userfaultfd.
static inline int pager_userfaultfd_dev_new(int devfd, int flags) {
    int r = ioctl(devfd, USERFAULTFD_IOC_NEW, flags);
    return r < 0 ? -errno : r;
}

// MARK: - userfaultfd ioctls

static inline int pager_uffdio_api(int fd, uint64_t requested, uint64_t *features, uint64_t *ioctls) {
    struct uffdio_api api = {.api = UFFD_API, .features = requested};
    if (ioctl(fd, UFFDIO_API, &api) < 0) return -errno;
    *features = api.features;
    *ioctls = api.ioctls;
    return 0;
}

static inline int pager_uffdio_register(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t *ioctls) {
    struct uffdio_register reg = {.range = {.start = start, .len = len}, .mode = mode};
    if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0) return -errno;
    *ioctls = reg.ioctls;
    return 0;
}

static inline int pager_uffdio_unregister(int fd, uint64_t start, uint64_t len) {
    struct uffdio_range range = {.start = start, .len = len};
    return ioctl(fd, UFFDIO_UNREGISTER, &range) < 0 ? -errno : 0;
}

static inline int pager_uffdio_wake(int fd, uint64_t start, uint64_t len) {
    struct uffdio_range range = {.start = start, .len = len};
    return ioctl(fd, UFFDIO_WAKE, &range) < 0 ? -errno : 0;
}

/// UFFDIO_COPY. *copied receives the kernel's count of bytes copied (or a negative errno
/// the kernel stored there), also on failure, because EAGAIN can follow a partial copy.
static inline int pager_uffdio_copy(int fd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode, int64_t *copied) {
    struct uffdio_copy c = {.dst = dst, .src = src, .len = len, .mode = mode, .copy = 0};
    int r = ioctl(fd, UFFDIO_COPY, &c);
    int err = r < 0 ? errno : 0;
    *copied = c.copy;
    return r < 0 ? -err : 0;
}

static inline int pager_uffdio_zeropage(int fd, uint64_t start, uint64_t len, uint64_t mode, int64_t *zeroed) {
    struct uffdio_zeropage z = {.range = {.start = start, .len = len}, .mode = mode, .zeropage = 0};
    int r = ioctl(fd, UFFDIO_ZEROPAGE, &z);
    int err = r < 0 ? errno : 0;
    *zeroed = z.zeropage;
    return r < 0 ? -err : 0;
}

static inline int pager_uffdio_continue(int fd, uint64_t start, uint64_t len, uint64_t mode, int64_t *mapped) {
    struct uffdio_continue c = {.range = {.start = start, .len = len}, .mode = mode, .mapped = 0};
    int r = ioctl(fd, UFFDIO_CONTINUE, &c);
    int err = r < 0 ? errno : 0;
    *mapped = c.mapped;
    return r < 0 ? -err : 0;
}

static inline int pager_uffdio_writeprotect(int fd, uint64_t start, uint64_t len, uint64_t mode) {
    struct uffdio_writeprotect wp = {.range = {.start = start, .len = len}, .mode = mode};
    return ioctl(fd, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

static inline int pager_uffdio_poison(int fd, uint64_t start, uint64_t len, uint64_t mode, int64_t *updated) {
    struct uffdio_poison p = {.range = {.start = start, .len = len}, .mode = mode, .updated = 0};
    int r = ioctl(fd, UFFDIO_POISON, &p);
    int err = r < 0 ? errno : 0;
    *updated = p.updated;
    return r < 0 ? -err : 0;
}

// MARK: - PAGEMAP_SCAN

/// ioctl(PAGEMAP_SCAN) on an open /proc/PID/pagemap. Returns the number of page_region
/// entries filled, or -errno. arg->walk_end receives where the walk stopped.
static inline long pager_pagemap_scan(int fd, struct pm_scan_arg *arg) {
    long r = ioctl(fd, PAGEMAP_SCAN, arg);
    return r < 0 ? -errno : r;
}

// MARK: - Helpers defined in shim.c (they need _GNU_SOURCE, which belongs in the .c file)

/// memfd_create(2). Returns the fd or -errno.
int pager_memfd_create(const char *name, unsigned int flags);
/// The MFD_* flags, as values.
extern const unsigned int PAGER_MFD_CLOEXEC;
extern const unsigned int PAGER_MFD_HUGETLB;
extern const unsigned int PAGER_MFD_HUGE_2MB;

/// Moves a mapping to a fresh address: reserves one with mmap(PROT_NONE), then
/// mremap(MREMAP_MAYMOVE | MREMAP_FIXED) onto it (mremap is variadic in libc).
/// Returns the new address, or NULL with *err set.
void *pager_mremap_relocate(void *old, size_t len, int *err);

/// sendmsg(2) of `len` bytes with `nfds` descriptors attached as SCM_RIGHTS. Returns bytes sent or -errno.
long pager_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);
/// getsockopt(SO_PEERCRED): the pid of the process at the other end of a Unix socket.
/// Returns the pid or -errno.
int pager_peer_pid(int sock);
/// process_vm_readv(2) of one range: copies `len` bytes at `remote` in process `pid` to
/// `local`. Returns the bytes copied (short only at an unmapped address) or -errno.
long pager_process_read(int pid, void *local, uint64_t remote, size_t len);
/// recvmsg(2) of up to `cap` bytes and up to `maxfds` SCM_RIGHTS descriptors (received with
/// MSG_CMSG_CLOEXEC). *nfds receives the count; *truncated is 1 if data or descriptors were cut.
long pager_recv_fds(int sock, void *buf, size_t cap, int *fds, int maxfds, int *nfds, int *truncated);

/// accept4(2) with SOCK_CLOEXEC, retrying EINTR. Returns the fd or -errno.
int pager_accept_cloexec(int listener);

/// accept4(2) with SOCK_CLOEXEC, returning the peer address; no retry. Returns the fd or -errno.
int pager_accept_addr(int listener, void *addr, unsigned int *addrlen);

/// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): drops a file range, which then reads
/// as zeros. Returns 0 or -errno.
int pager_punch_hole(int fd, int64_t offset, int64_t length);

/// sched_setaffinity(0, ...) for the calling thread: pin it to one CPU. Returns 0 or -errno.
int pager_pin_to_cpu(int cpu);
/// sched_setscheduler(0, idle ? SCHED_IDLE : SCHED_OTHER) for the calling thread. Returns 0
/// or -errno (leaving SCHED_IDLE needs RLIMIT_NICE or CAP_SYS_NICE when not root).
int pager_set_thread_idle(int idle);
/* SCHED_FIFO at `priority` (1..99), or back to SCHED_OTHER with 0. */
int pager_set_thread_fifo(int priority);
/* CPUs the calling thread may run on (sched_getaffinity). */
int pager_allowed_cpu_count(void);
/// A thread-local flag: whether the calling thread is a background thread.
void pager_mark_background_thread(int on);
int pager_is_background_thread(void);
/// sched_getcpu(3).
int pager_current_cpu(void);
/// pthread_setname_np(3) for the calling thread (15 bytes at most).
void pager_set_thread_name(const char *name);
/// Reads the 8 bytes at `p` through a volatile pointer in a separate translation unit, so the
/// compiler cannot drop a read whose only purpose is to touch (fault in) memory.
uint64_t pager_touch_read(const volatile void *p);

/// pidfd_open(2): a descriptor that becomes readable when the process exits. -errno on failure.
static inline int pager_pidfd_open(int pid) {
    long r = syscall(434 /* __NR_pidfd_open */, pid, 0);
    return r < 0 ? -errno : (int)r;
}

/// gettid(2).
int pager_gettid(void);

/// A raw clone(SIGCHLD) (no atfork handlers, so no malloc locks are held while the kernel
/// waits for a UFFD_EVENT_FORK reader); the child reads one byte at `touch` if it is not
/// NULL, then exits 0. Returns the signal that killed the child (e.g. SIGBUS), 0 if it
/// exited normally, or -errno.
int pager_clone_touch_and_reap(const volatile void *touch);

/// Enters a foreground section on the calling thread; returns how many it was already in
/// (0: this is the outermost one, which alone changes the scheduling policy).
int pager_enter_foreground(void);
/// Leaves the section entered by the matching pager_enter_foreground().
void pager_leave_foreground(void);
/// sched_getscheduler(0): the calling thread's policy (SCHED_OTHER, SCHED_IDLE, ...) or -errno.
int pager_thread_policy(void);

// Secret files (SecretFile.swift): getrandom(2), and the extended attribute that holds a
// file's access ACL. Swift's Glibc module exports neither header.
#include <sys/random.h>
#include <sys/xattr.h>

#endif
