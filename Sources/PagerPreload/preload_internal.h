/* What the preload library's files share. Hidden: QEMU sees only mmap and mmap64. */
#pragma once
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#define PAGER_HIDDEN __attribute__((visibility("hidden")))

#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

/* common.c */
/* Stops QEMU at once with a message (exit status 78): the guest must never run on missing memory. */
PAGER_HIDDEN __attribute__((noreturn, format(printf, 1, 2))) void pager_die(const char *fmt, ...);
/* Whether QEMU's command line contains `needle` anywhere. */
PAGER_HIDDEN int pager_cmdline_has(const char *needle);
/* Whether QEMU's command line has `arg` as one whole argument (e.g. "-incoming"). */
PAGER_HIDDEN int pager_cmdline_has_argument(const char *arg);
/* The RAM file's filesystem (statfs f_type) and page size: hugetlbfs pages, else 4 KiB. */
PAGER_HIDDEN long pager_ram_page_size(int fd, const char *path, long *fs_type);
/* The address of the Unix socket named by environment variable `name` (its value `path`). */
PAGER_HIDDEN struct sockaddr_un pager_unix_address(const char *path, const char *name);
/* One mapping in Firecracker's handoff format. */
PAGER_HIDDEN int pager_mapping_json(char *json, size_t size, void *addr, size_t length, off_t offset, long page_size);
/* Sends `json`, with descriptor `fd` attached (SCM_RIGHTS) unless it is -1; returns sendmsg's result. */
PAGER_HIDDEN ssize_t pager_send_json(int s, const char *json, int fd);
/* A userfaultfd (the system call, else /dev/userfaultfd); -1 with errno set if neither works. */
PAGER_HIDDEN int pager_open_userfaultfd(void);

/* destination.c: registers the mapping (MISSING mode) and hands it to PAGER_UFFD_SOCKET. */
PAGER_HIDDEN void pager_hand_over(void *addr, size_t length, off_t offset, int fd, const char *path);
PAGER_HIDDEN int pager_handed_over(void);
/* The handoff connection and userfaultfd (-1 before the handoff). */
PAGER_HIDDEN int pager_handoff_socket(void);
PAGER_HIDDEN int pager_handoff_uffd(void);

/* source.c: offers write tracking and the fence of the mapping on PAGER_TRACK_SOCKET; with
 * `arrived` (the mapping came from a pager, destination.c) the fence only, once every page is local. */
PAGER_HIDDEN void pager_offer_source(void *addr, size_t length, off_t offset, int fd, const char *path, int arrived);
PAGER_HIDDEN int pager_source_offered(void);
