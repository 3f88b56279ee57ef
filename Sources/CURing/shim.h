// liburing.h defines _XOPEN_SOURCE/_GNU_SOURCE itself and then clashes on fd_set with
// headers already seen; <features.h> first keeps the feature macros consistent.
#include <features.h>
// swift-system's CSystem module includes the kernel's <linux/io_uring.h>; liburing ships
// its own copy with the same include guard but older field layout, and Clang refuses two
// different definitions of struct io_uring_sqe in one Swift module. Including the kernel's
// header first makes liburing use it too (Debian 12: kernel 6.1 uapi, liburing 2.3).
#include <linux/io_uring.h>
#include <liburing.h>
