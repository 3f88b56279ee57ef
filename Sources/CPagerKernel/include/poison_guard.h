// The process-wide list of memory this process must poison if it dies holding it.
//
// A destination that holds a workload's userfaultfd is the only thing that can make a missing
// page arrive. If it exits for any reason before every page is local (an error, a refusal, a
// signal, a trap in its own code), the kernel drops the userfaultfd and the workload would read
// zeros where its data belongs. So every range a destination takes over is entered here, and a
// handler on the fatal signals poisons what is still missing (UFFDIO_POISON: later accesses
// raise SIGBUS) before the process dies. Only SIGKILL escapes (no handler can run).
#ifndef PAGER_POISON_GUARD_H
#define PAGER_POISON_GUARD_H

#include <stdint.h>
#include <sys/types.h>

// Slots in the list: one per handed-over mapping (a workload brings one or a few).
#define PAGER_POISON_GUARD_SLOTS 256

// Enters [start, start+len) of userfaultfd `fd` (pages of `page_size` bytes), memory of the
// process `owner_pidfd` refers to (-1: unknown, or this process; the caller keeps it open
// while the slot lives). Returns the slot (>= 0), or -ENOSPC when every slot is taken.
int pager_poison_guard_add(int fd, uint64_t start, uint64_t len, uint64_t page_size, int owner_pidfd);

// The kernel has no UFFDIO_POISON (before Linux 6.6): from now on poison_all stops each
// slot's owner (pager_stop_owner) instead of poisoning, since closing the userfaultfd would
// let the owner read zeros where its missing pages belong.
void pager_poison_guard_set_unsupported(int unsupported);
int pager_poison_guard_unsupported(void);

// A pidfd of `owner` (pidfd_open): >= 0, -EINVAL for no owner or this process, or -errno.
int pager_owner_pidfd(pid_t owner);

// Kills the process `pidfd` refers to (pidfd_send_signal SIGKILL: never another process that
// reused its pid) and waits up to 5 s until it is gone (poll on the pidfd). Async-signal-safe,
// allocates nothing. Returns 0 (also when it was already gone), -EINVAL for no pidfd,
// -ETIMEDOUT, or -errno.
int pager_stop_owner_pidfd(int pidfd);

// pager_owner_pidfd, then pager_stop_owner_pidfd: for an owner known only by its pid now.
int pager_stop_owner(pid_t owner);

// Takes a slot out of the list (its memory is all local, or no longer the process's to guard).
void pager_poison_guard_remove(int slot);

// Poisons every page of [start, start+len) that is still missing, skipping pages already
// present (EEXIST), then wakes the range's waiters so they fault again and get SIGBUS.
// Async-signal-safe (ioctl only). Returns the pages poisoned, or -errno of the first
// failure other than EEXIST.
int64_t pager_poison_missing(int fd, uint64_t start, uint64_t len, uint64_t page_size);

// Poisons the missing pages of every slot in the list (what the fatal-signal handler does);
// where the kernel cannot poison, stops every slot's owner. Returns the pages poisoned (or
// put out of reach with their owner).
int64_t pager_poison_guard_poison_all(void);

// Installs the handler on the signals whose default action ends the process and that this
// process does not otherwise handle: SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGABRT, SIGFPE, SIGSYS,
// SIGHUP, SIGQUIT, SIGXCPU, SIGXFSZ, SIGALRM, SIGVTALRM, SIGPROF, SIGUSR2. It poisons all
// slots, writes one line to stderr, then lets the signal take its course with the action that
// was in force before (Swift's backtracer, or the default). Idempotent. Returns 0 or -errno.
int pager_poison_guard_install_handlers(void);

#endif
