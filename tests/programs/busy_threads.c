/* More runnable threads than CPUs: argv[2] threads (default 4) named "busy-N" spin for argv[1]
 * seconds (default 2), so on a 2-CPU machine each waits in the run queue about half the time. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

volatile unsigned long sink;
static double seconds = 2.0;

__attribute__((noinline)) void spin(double end) {
    SPIN_UNTIL(end, sink);
}

static void *busy(void *arg) {
    /* Off the CPU once before the rename, as a new thread often is: its first switch-out then
     * sees the process's name, and its figures must still end under "busy-N". */
    usleep(2000);
    char name[16];
    snprintf(name, sizeof name, "busy-%ld", (long)arg);
    pthread_setname_np(pthread_self(), name);
    spin(now() + seconds);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) seconds = atof(argv[1]);
    long threads = argc > 2 ? atol(argv[2]) : 4;
    if (threads < 1 || threads > 64) threads = 4;
    pthread_t ids[64];
    for (long i = 0; i < threads; i++) pthread_create(&ids[i], NULL, busy, (void *)i);
    for (long i = 0; i < threads; i++) pthread_join(ids[i], NULL);
    return 0;
}
