/* Known CPU behaviour: run_work() calls hot_path() and cold_path() with 7:3 iterations of the
 * same loop body, so about 70% of CPU time is in hot_path and 30% in cold_path, for argv[1]
 * seconds (default 3). Exits with argv[2] (default 0) so tests can check exit-code
 * pass-through. On exit it prints the split it measured of its own CPU time (`cpu_split:
 * hot_path 70.12%`): on a busy host, or in an emulated VM, the split moves from run to run, and
 * a profile is right when it finds the split that ran, not the nominal one. */
#include <stdio.h>
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

/* CPU time of this thread in nanoseconds: a preemption is not time in either function. */
static unsigned long long thread_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* Calls of about a millisecond, so that reading the clock around each (a system call) costs a
 * fraction of a percent of the time. */
__attribute__((noinline)) void run_work(double seconds) {
    unsigned long long hot_ns = 0, cold_ns = 0;
    double end = now() + seconds;
    while (now() < end) {
        unsigned long long start = thread_ns();
        hot_path(700000);
        unsigned long long middle = thread_ns();
        cold_path(300000);
        unsigned long long stop = thread_ns();
        hot_ns += middle - start;
        cold_ns += stop - middle;
    }
    if (hot_ns + cold_ns > 0)
        printf("cpu_split: hot_path %.2f%%\n", 100.0 * hot_ns / (hot_ns + cold_ns));
}

int main(int argc, char **argv) {
    run_work(argc > 1 ? atof(argv[1]) : 3.0);
    return argc > 2 ? atoi(argv[2]) : 0;
}
