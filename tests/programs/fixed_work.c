/* Fixed CPU work for overhead benchmarks: argv[2] threads (default 2) each run argv[1] rounds
 * (default 20000, about 4 s) of a 16-deep call chain ending in a register-only loop. Prints, on stdout,
 * `wall_s=<seconds> cpu_s=<own CPU seconds>` so a runner can separate the workload's time from
 * a profiler's. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common.h"

volatile unsigned long sink;
static long rounds = 20000;

__attribute__((noinline)) unsigned long leaf_loop(unsigned long x) {
    FORCE_FRAME(); /* keep a frame so frame-pointer stacks are whole */
    for (int i = 0; i < 200000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

__attribute__((noinline)) unsigned long chain(int depth, unsigned long x) {
    if (depth == 0) return leaf_loop(x);
    unsigned long r = chain(depth - 1, x + depth);
    __asm__ volatile("" ::: "memory"); /* not a tail call: keep every frame */
    return r;
}

static void *worker(void *arg) {
    unsigned long x = (unsigned long)arg;
    for (long r = 0; r < rounds; r++) x = chain(16, x);
    sink = x;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) rounds = atol(argv[1]);
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    if (threads < 1 || threads > 64) threads = 2;
    double start = now();
    pthread_t ids[64];
    for (int i = 0; i < threads; i++) pthread_create(&ids[i], NULL, worker, (void *)(long)(i + 1));
    for (int i = 0; i < threads; i++) pthread_join(ids[i], NULL);
    double wall = now() - start;
    printf("wall_s=%.6f cpu_s=%.6f\n", wall, cpu_seconds());
    return 0;
}
