/* Allocation-heavy workload for the allocation benchmark: argv[1] (default 1000000) pairs of
 * malloc(64) and free through libc. Prints `wall_s=<seconds> cpu_s=<own CPU seconds>
 * pairs=<pairs>`. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common.h"

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 1000000;
    double start = now();
    for (long i = 0; i < pairs; i++) {
        void *volatile block = malloc(64);
        free(block);
    }
    double wall = now() - start;
    printf("wall_s=%.6f cpu_s=%.6f pairs=%ld\n", wall, cpu_seconds(), pairs);
    return 0;
}
