/* Helpers the destination and source modes share (see preload.c). */
#include "preload_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

void pager_die(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dprintf(2, "pager-preload: FATAL: %s; stopping QEMU so the guest never runs on missing memory\n", msg);
    _exit(78);
}

/* QEMU's command line, its arguments separated by NUL and ended by one more NUL, in a
 * buffer to free; NULL if unreadable. Read whole: libvirt's command lines can be long. */
static char *read_cmdline(size_t *length) {
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t size = 65536, used = 0;
    char *buf = malloc(size);
    for (;;) {
        if (!buf) break;
        if (used + 1 >= size) {
            char *bigger = size < (64u << 20) ? realloc(buf, size * 2) : NULL;
            if (!bigger) { free(buf); buf = NULL; break; }
            buf = bigger;
            size *= 2;
        }
        ssize_t n = read(fd, buf + used, size - used - 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        used += (size_t)n;
    }
    close(fd);
    if (!buf) return NULL;
    buf[used] = 0;
    *length = used;
    return buf;
}

int pager_cmdline_has(const char *needle) {
    size_t n = 0;
    char *buf = read_cmdline(&n);
    if (!buf) return 0;
    for (size_t i = 0; i < n; i++) if (buf[i] == 0) buf[i] = ' ';
    int found = strstr(buf, needle) != NULL;
    free(buf);
    return found;
}

int pager_cmdline_has_argument(const char *arg) {
    size_t n = 0;
    char *buf = read_cmdline(&n);
    if (!buf) return 0;
    int found = 0;
    for (size_t i = 0; i < n && !found; i += strlen(buf + i) + 1) found = strcmp(buf + i, arg) == 0;
    free(buf);
    return found;
}

long pager_ram_page_size(int fd, const char *path, long *fs_type) {
    struct statfs fs;
    if (fstatfs(fd, &fs) < 0) pager_die("fstatfs(%s): %s", path, strerror(errno));
    *fs_type = (long)fs.f_type;
    return fs.f_type == HUGETLBFS_MAGIC ? (long)fs.f_bsize : 4096;
}

struct sockaddr_un pager_unix_address(const char *path, const char *name) {
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sun.sun_path) pager_die("%s path too long", name);
    strcpy(sun.sun_path, path);
    return sun;
}

int pager_mapping_json(char *json, size_t size, void *addr, size_t length, off_t offset, long page_size) {
    return snprintf(json, size, "[{\"base_host_virt_addr\":%lu,\"size\":%zu,\"offset\":%lld,\"page_size\":%ld}]",
                    (unsigned long)(uintptr_t)addr, length, (long long)offset, page_size);
}

ssize_t pager_send_json(int s, const char *json, int fd) {
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

/* The system call, or, where it is not permitted (QEMU as an unprivileged user with
 * vm.unprivileged_userfaultfd=0), /dev/userfaultfd, which the administrator grants by its
 * group (the pager's udev rule: group kvm, mode 0660). */
int pager_open_userfaultfd(void) {
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
