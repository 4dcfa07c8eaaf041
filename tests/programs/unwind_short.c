/* A short process: spins argv[1] milliseconds (default 3) in short_work() called from main,
 * and exits. Run many times in a row, each run is a new exec the profiler meets for the first
 * time; its samples must be walked whole all the same. Built with and without frame pointers,
 * like every `unwind_` program. */
#include <stdlib.h>

#include "common.h"

volatile unsigned long sink;

__attribute__((noinline)) void short_work(double end) {
    SPIN_UNTIL(end, sink);
}

int main(int argc, char **argv) {
    short_work(now() + (argc > 1 ? atof(argv[1]) : 3.0) / 1000.0);
    return 0;
}
