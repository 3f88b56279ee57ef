// pager-preload: an LD_PRELOAD library for an unmodified QEMU destination. See preload.c.
#pragma once
