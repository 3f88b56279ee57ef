#include <features.h>
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

// The errno of the libibverbs or librdmacm call that just failed (they report through errno).
static inline int pager_rdma_errno(void) { return errno; }

// `text:port` as an IPv4 socket address; 0, or -EINVAL when `text` is not an IPv4 address.
static inline int pager_rdma_ipv4(const char *text, uint16_t port, struct sockaddr_in *out) {
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons(port);
    return inet_pton(AF_INET, text, &out->sin_addr) == 1 ? 0 : -EINVAL;
}

// rdma_resolve_addr to an IPv4 `text:port`: 0, -EINVAL for a bad address, else -errno.
static inline int pager_rdma_resolve_ipv4(struct rdma_cm_id *id, const char *text, uint16_t port, int timeout_ms) {
    struct sockaddr_in to;
    if (pager_rdma_ipv4(text, port, &to) != 0) return -EINVAL;
    return rdma_resolve_addr(id, NULL, (struct sockaddr *)&to, timeout_ms) == 0 ? 0 : -errno;
}

// rdma_bind_addr to an IPv4 `text:port`: 0, -EINVAL for a bad address, else -errno.
static inline int pager_rdma_bind_ipv4(struct rdma_cm_id *id, const char *text, uint16_t port) {
    struct sockaddr_in at;
    if (pager_rdma_ipv4(text, port, &at) != 0) return -EINVAL;
    return rdma_bind_addr(id, (struct sockaddr *)&at) == 0 ? 0 : -errno;
}
