/* Context-switch-heavy workload for the off-CPU benchmark: two threads pass a byte back and
 * forth through two pipes argv[1] times (default 100000), each blocking in read() between
 * turns. Prints `wall_s=<seconds> cpu_s=<own CPU seconds> switches=<context switches>`. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

static long rounds = 100000;
static int ping[2], pong[2];

static void *responder(void *arg) {
    (void)arg;
    char byte;
    for (long i = 0; i < rounds; i++) {
        if (read(ping[0], &byte, 1) != 1 || write(pong[1], &byte, 1) != 1) break;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) rounds = atol(argv[1]);
    if (pipe(ping) != 0 || pipe(pong) != 0) return 1;
    double start = now();
    pthread_t thread;
    pthread_create(&thread, NULL, responder, NULL);
    char byte = 'x';
    for (long i = 0; i < rounds; i++) {
        if (write(ping[1], &byte, 1) != 1 || read(pong[0], &byte, 1) != 1) break;
    }
    pthread_join(thread, NULL);
    double wall = now() - start;
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    printf("wall_s=%.6f cpu_s=%.6f switches=%ld\n", wall, cpu_seconds(),
           usage.ru_nvcsw + usage.ru_nivcsw);
    return 0;
}
