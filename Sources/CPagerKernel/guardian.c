// See include/guardian.h.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "CPagerKernel.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>

extern char **environ;

int pager_spawn_guardian(const char *path, char *const argv[], int socket, pid_t *pid) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    int rc = posix_spawn_file_actions_init(&actions);
    if (rc != 0) return -rc;
    rc = posix_spawnattr_init(&attr);
    if (rc != 0) {
        posix_spawn_file_actions_destroy(&actions);
        return -rc;
    }
    sigset_t blocked;
    sigemptyset(&blocked);
    const int signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGPIPE};
    for (unsigned i = 0; i < sizeof signals / sizeof signals[0]; i++) sigaddset(&blocked, signals[i]);
    // Handlers do not survive exec, but SIG_IGN and the mask do: reset the first, set the second.
    sigset_t defaults;
    sigfillset(&defaults);
    rc = posix_spawnattr_setsigmask(&attr, &blocked);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&attr, &defaults);
    if (rc == 0) rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    if (rc == 0) rc = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    // dup2 onto 3 clears close-on-exec there, but not when the descriptor already is 3:
    // then it goes through a temporary copy first.
    int source = socket == 3 ? fcntl(socket, F_DUPFD_CLOEXEC, 4) : socket;
    if (source < 0) rc = errno;
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, source, 3);
    if (rc == 0) rc = posix_spawn(pid, path, &actions, &attr, argv, environ);
    if (source != socket && source >= 0) close(source);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
    return rc > 0 ? -rc : rc;
}

int pager_close_descriptors_from(int first) {
    long r = syscall(436 /* __NR_close_range */, (unsigned)first, ~0U, 0);
    return r < 0 ? -errno : 0;
}
