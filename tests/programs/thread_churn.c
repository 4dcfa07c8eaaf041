/* Threads appearing and vanishing by the thousand, then an exec:
 *   thread_churn SECONDS [PROGRAM ARGS...]
 * creates threads in waves of 64 (each spins about 0.2 ms and exits) for SECONDS, prints how
 * many it created, then executes PROGRAM if given. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common.h"

#define WAVE 64

static volatile unsigned long sink;

__attribute__((noinline)) static void *short_life(void *arg) {
    double end = now() + 0.0002;
    SPIN_UNTIL(end, sink);
    return arg;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SECONDS [PROGRAM ARGS...]\n", argv[0]);
        return 2;
    }
    double end = now() + atof(argv[1]);
    unsigned long created = 0;
    pthread_t threads[WAVE];
    while (now() < end) {
        for (int i = 0; i < WAVE; i++)
            if (pthread_create(&threads[i], NULL, short_life, NULL) == 0) created++;
            else threads[i] = 0;
        for (int i = 0; i < WAVE; i++)
            if (threads[i]) pthread_join(threads[i], NULL);
    }
    printf("threads=%lu\n", created);
    fflush(stdout);
    if (argc > 2) {
        execvp(argv[2], argv + 2);
        perror("exec");
        return 127;
    }
    return 0;
}
