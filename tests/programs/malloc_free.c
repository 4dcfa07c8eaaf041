/* Allocation-heavy workload for the allocation benchmark: argv[1] (default 1000000) pairs of
 * malloc(64) and free through libc. Prints `wall_s=<seconds> cpu_s=<own CPU seconds>
 * pairs=<pairs>`. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

static double seconds(struct timespec ts) { return ts.tv_sec + ts.tv_nsec / 1e9; }

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 1000000;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < pairs; i++) {
        void *volatile block = malloc(64);
        free(block);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    printf("wall_s=%.6f cpu_s=%.6f pairs=%ld\n", seconds(end) - seconds(start),
           usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
               usage.ru_stime.tv_usec / 1e6,
           pairs);
    return 0;
}
