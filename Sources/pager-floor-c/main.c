// pager-floor-c: the floors pager-bench compares the pager with, in plain C so that they show
// what the machine allows rather than what Swift allows (see floor.h and each mode's file).
//
//   pager-floor-c serve HOST PORT FILE BYTES                 the source: ranges or one stream
//   pager-floor-c stream wire|install HOST PORT BYTES FILE   the wire floor and the copy floor
//   pager-floor-c naive HOST PORT BYTES FILE FETCH_PAGES ACCESS SEED TOUCH_PAGES
//                                                            the naive pager
#include "floor.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "serve") == 0) return floor_serve(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "stream") == 0) return floor_stream(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "naive") == 0) return floor_naive(argc - 2, argv + 2);
    fprintf(stderr, "usage: pager-floor-c serve|stream|naive ... (see Sources/pager-floor-c/main.c)\n");
    return 64;
}
