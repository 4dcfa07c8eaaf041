/* Two named threads burning CPU in distinct functions for argv[1] seconds (default 2) while the
 * main thread waits: "spinner-a" in spin_a, "spinner-b" in spin_b. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "common.h"

volatile unsigned long sink;
static double seconds = 2.0;

__attribute__((noinline)) void spin_a(double end) {
    SPIN_UNTIL(end, sink);
}

__attribute__((noinline)) void spin_b(double end) {
    SPIN_UNTIL(end, sink);
}

static void *thread_a(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "spinner-a");
    spin_a(now() + seconds);
    return NULL;
}

static void *thread_b(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "spinner-b");
    spin_b(now() + seconds);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) seconds = atof(argv[1]);
    pthread_t a, b;
    pthread_create(&a, NULL, thread_a, NULL);
    pthread_create(&b, NULL, thread_b, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    return 0;
}
