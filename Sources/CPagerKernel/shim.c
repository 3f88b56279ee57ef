// Helpers that need _GNU_SOURCE declarations (memfd_create, mremap, sched_*), defined
// here rather than in the header so no Swift module is compiled with _GNU_SOURCE.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "CPagerKernel.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <linux/memfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/resource.h>
#include <sys/wait.h>

const unsigned int PAGER_MFD_CLOEXEC = MFD_CLOEXEC;
const unsigned int PAGER_MFD_HUGETLB = MFD_HUGETLB;
const unsigned int PAGER_MFD_HUGE_2MB = MFD_HUGE_2MB;

int pager_memfd_create(const char *name, unsigned int flags) {
    int fd = memfd_create(name, flags);
    return fd < 0 ? -errno : fd;
}

void *pager_mremap_relocate(void *old, size_t len, int *err) {
    void *target = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (target == MAP_FAILED) {
        *err = errno;
        return NULL;
    }
    void *p = mremap(old, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, target);
    if (p == MAP_FAILED) {
        *err = errno;
        munmap(target, len);
        return NULL;
    }
    *err = 0;
    return p;
}

// One SCM_RIGHTS message carries at most this many descriptors (the kernel's SCM_MAX_FD is 253).
#define PAGER_MAX_FDS 64

long pager_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > PAGER_MAX_FDS) return -EINVAL;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * PAGER_MAX_FDS)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t r;
    do {
        r = sendmsg(sock, &msg, MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : (long)r;
}

long pager_recv_fds(int sock, void *buf, size_t cap, int *fds, int maxfds, int *nfds, int *truncated) {
    *nfds = 0;
    *truncated = 0;
    if (maxfds < 0 || maxfds > PAGER_MAX_FDS) return -EINVAL;
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    union {
        char buf[CMSG_SPACE(sizeof(int) * PAGER_MAX_FDS)];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof(control.buf)};
    ssize_t r;
    do {
        r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) *truncated = 1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        const int *in = (const int *)CMSG_DATA(c);
        for (int i = 0; i < n; i++) {
            if (*nfds < maxfds) {
                fds[(*nfds)++] = in[i];
            } else {
                // More descriptors than the caller wants: close the extras, never leak them.
                close(in[i]);
                *truncated = 1;
            }
        }
    }
    return (long)r;
}

int pager_accept_cloexec(int listener) {
    int fd;
    do {
        fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int pager_accept_addr(int listener, void *addr, unsigned int *addrlen) {
    int fd = accept4(listener, (struct sockaddr *)addr, (socklen_t *)addrlen, SOCK_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int pager_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) < 0 ? -errno : 0;
}

int pager_pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set) < 0 ? -errno : 0;
}

/* Whether this thread made itself a background (SCHED_IDLE) thread, so that a foreground
 * section on any other thread costs nothing. */
static __thread int background_thread;

int pager_set_thread_idle(int idle) {
    struct sched_param param = {0};
    if (sched_setscheduler(0, idle ? SCHED_IDLE : SCHED_OTHER, &param) < 0) return -errno;
    return 0;
}

int pager_set_thread_fifo(int priority) {
    struct sched_param param = { .sched_priority = priority };
    if (sched_setscheduler(0, priority > 0 ? SCHED_FIFO : SCHED_OTHER, &param) < 0) return -errno;
    return 0;
}

int pager_allowed_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) < 0) return -errno;
    return CPU_COUNT(&set);
}

void pager_mark_background_thread(int on) { background_thread = on; }
int pager_is_background_thread(void) { return background_thread; }

int pager_current_cpu(void) { return sched_getcpu(); }

void pager_set_thread_name(const char *name) { pthread_setname_np(pthread_self(), name); }

uint64_t pager_touch_read(const volatile void *p) { return *(const volatile uint64_t *)p; }

int pager_gettid(void) { return (int)syscall(SYS_gettid); }

int pager_clone_touch_and_reap(const volatile void *touch) {
    long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid < 0) return -errno;
    if (pid == 0) {
        // The parent's runtime may have installed crash handlers (Swift's backtracer): the
        // child must die of the signal plainly, not print a crash report for an expected SIGBUS.
        struct sigaction dfl;
        memset(&dfl, 0, sizeof(dfl));
        dfl.sa_handler = SIG_DFL;
        sigaction(SIGBUS, &dfl, NULL);
        sigaction(SIGSEGV, &dfl, NULL);
        if (touch) (void)*(const volatile char *)touch;
        syscall(SYS_exit_group, 0);
    }
    int status;
    while (waitpid((pid_t)pid, &status, 0) < 0) {
        if (errno != EINTR) return -errno;
    }
    return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

int pager_peer_pid(int sock) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return -errno;
    return cred.pid;
}

long pager_process_read(int pid, void *local, uint64_t remote, size_t len) {
    struct iovec l = { .iov_base = local, .iov_len = len };
    struct iovec r = { .iov_base = (void *)(uintptr_t)remote, .iov_len = len };
    ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
    return n < 0 ? -errno : n;
}

/* How many foreground sections the calling thread is inside: only the outermost one changes
 * the policy, so leaving an inner one (a ForegroundMutex taken inside withForegroundPriority)
 * does not put the thread back on SCHED_IDLE in the middle of the outer one. */
static __thread int foreground_depth;

int pager_enter_foreground(void) { return foreground_depth++; }
void pager_leave_foreground(void) { foreground_depth--; }

int pager_thread_policy(void) {
    int policy = sched_getscheduler(0);
    return policy < 0 ? -errno : policy;
}
