/* One busy thread among seven idle ones: "cruncher" spins in crunch() for argv[1] seconds
 * (default 2) while seven "idle-N" threads wait on a condition variable for work that never
 * comes, and main waits to join them. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common.h"

volatile unsigned long sink;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static int done;

__attribute__((noinline)) void crunch(double end) {
    SPIN_UNTIL(end, sink);
}

static void *cruncher(void *arg) {
    pthread_setname_np(pthread_self(), "cruncher");
    crunch(now() + *(double *)arg);
    pthread_mutex_lock(&lock);
    done = 1;
    pthread_cond_broadcast(&work);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void *idle(void *arg) {
    char name[16];
    snprintf(name, sizeof name, "idle-%ld", (long)arg);
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&lock);
    while (!done) pthread_cond_wait(&work, &lock);
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    pthread_t threads[8];
    for (long i = 0; i < 7; i++) pthread_create(&threads[i], NULL, idle, (void *)(i + 1));
    pthread_create(&threads[7], NULL, cruncher, &seconds);
    for (int i = 0; i < 8; i++) pthread_join(threads[i], NULL);
    return 0;
}
