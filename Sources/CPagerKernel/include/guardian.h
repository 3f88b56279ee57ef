// Starting the guardian process (see PagerKernel/Guardian.swift): the process that outlives
// a destination daemon killed with SIGKILL and poisons the memory it held.
#ifndef PAGER_GUARDIAN_H
#define PAGER_GUARDIAN_H

#include <sys/types.h>

/// posix_spawn(3) of `path` with `argv`, `socket` as its descriptor 3, in a session of its
/// own (POSIX_SPAWN_SETSID: a terminal's ^C or a SIGHUP of our process group does not reach
/// it) and with the termination signals blocked (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1,
/// SIGUSR2, SIGPIPE): it must outlive whatever signal ends the daemon, and it ends by itself
/// when the daemon's end of the socket closes. stdin becomes /dev/null; stdout and stderr are
/// the daemon's. Returns 0 and the pid, or -errno.
int pager_spawn_guardian(const char *path, char *const argv[], int socket, pid_t *pid);

/// close_range(2) from `first` up: a freshly started guardian drops any descriptor it
/// inherited by mistake (one not close-on-exec), above all another workload's userfaultfd,
/// whose registration would otherwise stay alive in it. 0 or -errno.
int pager_close_descriptors_from(int first);

#endif
