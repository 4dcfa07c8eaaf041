/* A thread other than the main one executes this program again (`child` mode): the kernel
 * gives the executing thread the leader's tid, and the old leader dies. The child then passes a
 * byte back and forth between two threads through two pipes argv[1] times (default 100000),
 * each blocking in read() between turns. Prints `wall_s=<seconds>` from the child. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static int pingpong(void) {
    if (pipe(ping) != 0 || pipe(pong) != 0) return 1;
    double start = now();
    pthread_t thread;
    pthread_create(&thread, NULL, responder, NULL);
    char byte = 'x';
    for (long i = 0; i < rounds; i++) {
        if (write(ping[1], &byte, 1) != 1 || read(pong[0], &byte, 1) != 1) break;
    }
    pthread_join(thread, NULL);
    printf("wall_s=%.6f\n", now() - start);
    return 0;
}

static char *child_args[4];

static void *exec_self(void *arg) {
    (void)arg;
    execv("/proc/self/exe", child_args);
    perror("execv");
    _exit(1);
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "child") == 0) {
        rounds = atol(argv[2]);
        return pingpong();
    }
    child_args[0] = argv[0];
    child_args[1] = "child";
    child_args[2] = argc > 1 ? argv[1] : "100000";
    child_args[3] = NULL;
    pthread_t thread;
    pthread_create(&thread, NULL, exec_self, NULL);
    for (;;) pause(); /* until the exec ends this thread */
}
