// See include/poison_guard.h. Everything the signal handler touches is async-signal-safe:
// atomics on a fixed array, ioctl, write, sigaction, raise.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "CPagerKernel.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>

struct guard_slot {
    // -1: free. Written last when a slot is filled (release), first when it is emptied, so a
    // handler that sees a descriptor also sees its range.
    _Atomic int fd;
    uint64_t start, len, page_size;
    // A pidfd of the memory's owner (-1: none), opened when the range was entered.
    int owner_pidfd;
};

static struct guard_slot slots[PAGER_POISON_GUARD_SLOTS];
static atomic_flag slots_initialised = ATOMIC_FLAG_INIT;
static _Atomic int slots_ready = 0;
// Set when the kernel has no UFFDIO_POISON (before 6.6): missing pages cannot be poisoned, so
// their owner is stopped instead.
static _Atomic int poison_unsupported = 0;

void pager_poison_guard_set_unsupported(int unsupported) { atomic_store(&poison_unsupported, unsupported != 0); }

int pager_poison_guard_unsupported(void) { return atomic_load(&poison_unsupported); }

int pager_owner_pidfd(pid_t owner) {
    if (owner <= 0 || owner == getpid()) return -EINVAL;
    int pidfd = (int)syscall(SYS_pidfd_open, owner, 0);
    return pidfd >= 0 ? pidfd : -errno;
}

int pager_stop_owner_pidfd(int pidfd) {
    if (pidfd < 0) return -EINVAL;
    // Through the pidfd: the process it was opened for, never one that reused its pid.
    if (syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0) != 0) return errno == ESRCH ? 0 : -errno;
    // Until it is gone: with a SIGKILL pending every one of its threads dies before it runs
    // another instruction, and a thread blocked on a fault dies instead of being woken into a
    // page the kernel would fill with zeros once the userfaultfd closes.
    struct pollfd p = {.fd = pidfd, .events = POLLIN, .revents = 0};
    int r;
    do { r = poll(&p, 1, 5000); } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    return r == 1 ? 0 : -ETIMEDOUT;
}

int pager_stop_owner(pid_t owner) {
    int pidfd = pager_owner_pidfd(owner);
    if (pidfd == -ESRCH) return 0; // already gone
    if (pidfd < 0) return pidfd;
    int r = pager_stop_owner_pidfd(pidfd);
    close(pidfd);
    return r;
}

static void init_slots(void) {
    if (atomic_load_explicit(&slots_ready, memory_order_acquire)) return;
    if (!atomic_flag_test_and_set(&slots_initialised)) {
        for (int i = 0; i < PAGER_POISON_GUARD_SLOTS; i++) atomic_store(&slots[i].fd, -1);
        atomic_store_explicit(&slots_ready, 1, memory_order_release);
    }
    while (!atomic_load_explicit(&slots_ready, memory_order_acquire)) {}
}

int pager_poison_guard_add(int fd, uint64_t start, uint64_t len, uint64_t page_size, int owner_pidfd) {
    init_slots();
    for (int i = 0; i < PAGER_POISON_GUARD_SLOTS; i++) {
        int expected = -1;
        // -2 reserves the slot while its range is written.
        if (atomic_compare_exchange_strong(&slots[i].fd, &expected, -2)) {
            slots[i].start = start;
            slots[i].len = len;
            slots[i].page_size = page_size;
            slots[i].owner_pidfd = owner_pidfd;
            atomic_store_explicit(&slots[i].fd, fd, memory_order_release);
            return i;
        }
    }
    return -ENOSPC;
}

void pager_poison_guard_remove(int slot) {
    if (slot < 0 || slot >= PAGER_POISON_GUARD_SLOTS) return;
    atomic_store_explicit(&slots[slot].fd, -1, memory_order_release);
}

int64_t pager_poison_missing(int fd, uint64_t start, uint64_t len, uint64_t page_size) {
    if (page_size == 0) return -EINVAL;
    int64_t poisoned = 0;
    uint64_t at = start, end = start + len;
    while (at < end) {
        int64_t updated = 0;
        int r = pager_uffdio_poison(fd, at, end - at, UFFDIO_POISON_MODE_DONTWAKE, &updated);
        if (r == 0) {
            poisoned += (int64_t)((end - at) / page_size);
            break;
        }
        uint64_t done = updated > 0 ? (uint64_t)updated : 0;
        poisoned += (int64_t)(done / page_size);
        if (r == -EEXIST) {
            // The page after `done` bytes is present (or already poisoned): skip it.
            at += done + page_size;
        } else if (r == -EAGAIN) {
            // The mappings are changing under us: try the rest again.
            at += done;
        } else {
            // ENOENT/ESRCH: the memory or the process is gone; EINVAL: no longer registered.
            // Nothing more can be done for this range; still wake whoever waits on it.
            pager_uffdio_wake(fd, start, len);
            return poisoned > 0 ? poisoned : r;
        }
    }
    pager_uffdio_wake(fd, start, len);
    return poisoned;
}

int64_t pager_poison_guard_poison_all(void) {
    init_slots();
    int64_t total = 0;
    int unsupported = atomic_load(&poison_unsupported);
    for (int i = 0; i < PAGER_POISON_GUARD_SLOTS; i++) {
        int fd = atomic_load_explicit(&slots[i].fd, memory_order_acquire);
        if (fd < 0) continue;
        if (unsupported) {
            // Every page of the range is out of reach with its owner (counted whole).
            if (pager_stop_owner_pidfd(slots[i].owner_pidfd) == 0) total += (int64_t)(slots[i].len / slots[i].page_size);
            continue;
        }
        int64_t n = pager_poison_missing(fd, slots[i].start, slots[i].len, slots[i].page_size);
        if (n > 0) total += n;
    }
    return total;
}

static const int guarded_signals[] = {
    SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGABRT, SIGFPE, SIGSYS, SIGHUP, SIGQUIT,
    SIGXCPU, SIGXFSZ, SIGALRM, SIGVTALRM, SIGPROF, SIGUSR2,
};
#define GUARDED_COUNT (sizeof(guarded_signals) / sizeof(guarded_signals[0]))
static struct sigaction previous[GUARDED_COUNT];
static _Atomic int handlers_installed = 0;

static void write_str(const char *s) {
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

static void on_fatal_signal(int sig, siginfo_t *info, void *context) {
    (void)context;
    pager_poison_guard_poison_all();
    if (atomic_load(&poison_unsupported))
        write_str("pagerd: fatal signal: this kernel cannot poison pages (no UFFDIO_POISON), so every workload whose pages were not all local was killed (never zeros)\n");
    else
        write_str("pagerd: fatal signal: every page not yet local was poisoned (the workload gets SIGBUS there, never zeros)\n");
    // Let the signal end the process as it would have: the earlier action (Swift's crash
    // report), or the default one where it was ignored: with its memory poisoned, this
    // process must not go on.
    struct sigaction next;
    memset(&next, 0, sizeof next);
    next.sa_handler = SIG_DFL;
    for (unsigned i = 0; i < GUARDED_COUNT; i++) {
        if (guarded_signals[i] == sig && previous[i].sa_handler != SIG_IGN) next = previous[i];
    }
    sigaction(sig, &next, NULL);
    // A fault raised by an instruction (si_code > 0 for SEGV/BUS/ILL/FPE) comes again when the
    // instruction runs again; any other (sent, or a trap that returns past itself) is raised
    // anew, unblocked so it is delivered now.
    int synchronous = info != NULL && info->si_code > 0 &&
        (sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE);
    if (synchronous) return;
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, sig);
    pthread_sigmask(SIG_UNBLOCK, &only, NULL);
    raise(sig);
    _exit(128 + sig); // the earlier handler returned: end anyway
}

int pager_poison_guard_install_handlers(void) {
    init_slots();
    int expected = 0;
    if (!atomic_compare_exchange_strong(&handlers_installed, &expected, 1)) return 0;
    // A mask inherited from whoever started us (a supervisor, a test runner's thread) must not
    // keep these signals pending while the process ends another way: unblock them here, on
    // the main thread before the others start, so every thread inherits the open mask.
    sigset_t unblock;
    sigemptyset(&unblock);
    for (unsigned i = 0; i < GUARDED_COUNT; i++) sigaddset(&unblock, guarded_signals[i]);
    pthread_sigmask(SIG_UNBLOCK, &unblock, NULL);
    for (unsigned i = 0; i < GUARDED_COUNT; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fatal_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        if (sigaction(guarded_signals[i], &sa, &previous[i]) != 0) return -errno;
    }
    return 0;
}
