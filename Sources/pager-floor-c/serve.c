// The floors' source: serves byte ranges of a file, or the whole file as one stream, to
// every client that connects (one forked process per connection, like a simple page server).
//
// usage: pager-floor-c serve HOST PORT FILE BYTES
// Prints "floor-server listening" once ready, then per connection
// "floor-server connection bytes=N requests=N cpu-seconds=X".
#include "floor.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void serve_connection(int fd, const unsigned char *file, uint64_t bytes) {
    double cpu0 = floor_cpu_seconds();
    uint64_t sent = 0, requests = 0;
    struct floor_request r;
    while (floor_read_full(fd, &r, sizeof(r)) == 0) {
        requests++;
        if (r.offset == FLOOR_STREAM) {
            if (r.length > bytes) break;
            for (uint64_t at = 0; at < r.length; at += FLOOR_CHUNK) {
                uint64_t n = r.length - at < FLOOR_CHUNK ? r.length - at : FLOOR_CHUNK;
                if (floor_write_full(fd, file + at, n) < 0) goto done;
                sent += n;
            }
        } else {
            // A naive server checks the range and nothing else.
            if (r.offset > bytes || r.length > bytes - r.offset) break;
            if (floor_write_full(fd, file + r.offset, r.length) < 0) break;
            sent += r.length;
        }
    }
done:
    printf("floor-server connection bytes=%llu requests=%llu cpu-seconds=%.6f\n", (unsigned long long)sent,
           (unsigned long long)requests, floor_cpu_seconds() - cpu0);
    fflush(stdout);
}

int floor_serve(int argc, char **argv) {
    if (argc != 4) floor_die("usage: pager-floor-c serve HOST PORT FILE BYTES");
    uint64_t bytes = strtoull(argv[3], NULL, 10);
    const unsigned char *file = floor_map_file(argv[2], bytes);
    int listener = floor_listen(argv[0], atoi(argv[1]));
    // Children are reaped by the kernel: each connection's process just exits.
    struct sigaction ignore = {.sa_handler = SIG_IGN, .sa_flags = SA_NOCLDWAIT};
    sigaction(SIGCHLD, &ignore, NULL);
    printf("floor-server listening\n");
    fflush(stdout);
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR) continue;
            floor_die("accept");
        }
        // Replies leave at once (Nagle would hold a small reply for the client's delayed ACK).
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        pid_t child = fork();
        if (child == 0) {
            close(listener);
            serve_connection(fd, file, bytes);
            _exit(0);
        }
        close(fd);
    }
}
