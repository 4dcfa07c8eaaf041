/* Known CPU behaviour: run_work() calls hot_path() and cold_path() with 7:3 iterations of the
 * same loop body, so 70% of CPU time is in hot_path and 30% in cold_path, for argv[1] seconds
 * (default 3). Exits with argv[2] (default 0) so tests can check exit-code pass-through. */
#include <stdlib.h>
#include <time.h>

#include "common.h"

volatile unsigned long sink;

/* A chain of dependent multiply-adds in registers: the same cost per iteration in both
 * functions whatever the code alignment (a loop through memory is not), and different
 * constants so the compiler cannot merge the two functions. */
__attribute__((noinline)) void hot_path(unsigned long iterations) {
    FORCE_FRAME();
    unsigned long x = iterations;
    for (unsigned long i = 0; i < iterations; i++) x = x * 6364136223846793005UL + 1;
    sink = x;
}

__attribute__((noinline)) void cold_path(unsigned long iterations) {
    FORCE_FRAME();
    unsigned long x = iterations;
    for (unsigned long i = 0; i < iterations; i++) x = x * 6364136223846793005UL + 3;
    sink = x;
}

__attribute__((noinline)) void run_work(double seconds) {
    double end = now() + seconds;
    while (now() < end) {
        hot_path(70000);
        cold_path(30000);
    }
}

int main(int argc, char **argv) {
    run_work(argc > 1 ? atof(argv[1]) : 3.0);
    return argc > 2 ? atoi(argv[2]) : 0;
}
