/* Known off-CPU behaviour, for argv[1] seconds (default 2): thread "waiter" loops over nap()
 * (a 20 ms nanosleep) and wait_pipe() (a read from a pipe that thread "writer" feeds every
 * 30 ms on an absolute clock), so it is off-CPU about 2/3 in nap and 1/3 in wait_pipe.
 * The blocking system calls are issued inline: libc's wrappers set up no frame pointer and
 * would hide the calling function from frame-pointer stacks. At exit it prints the time the
 * waiter spent off-CPU in each, as it measured it (wall time less its own CPU time: "nap_us N
 * wait_pipe_us N"): in an emulated VM the sleeps overshoot and the split moves. */
#include <stdio.h>
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

static double seconds = 2.0;
static int pipe_fds[2];
static volatile int done;

__attribute__((noinline)) void nap(long ms) {
    FORCE_FRAME();
    struct timespec ts = {0, ms * 1000000L};
    syscall3(SYS_nanosleep, (long)&ts, 0, 0);
}

__attribute__((noinline)) void wait_pipe(int fd) {
    FORCE_FRAME();
    char byte;
    syscall3(SYS_read, fd, (long)&byte, 1);
}

static double nap_seconds, wait_pipe_seconds, waiter_seconds;

/* Wall time less the thread's CPU time: how long it was off-CPU. */
static double off_cpu_now(void) {
    struct timespec cpu;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
    return now() - (cpu.tv_sec + cpu.tv_nsec / 1e9);
}

static void *waiter(void *arg) {
    (void)arg;
    double born = now();
    pthread_setname_np(pthread_self(), "waiter");
    while (!done) {
        double start = off_cpu_now();
        nap(20);
        double middle = off_cpu_now();
        wait_pipe(pipe_fds[0]);
        nap_seconds += middle - start;
        wait_pipe_seconds += off_cpu_now() - middle;
    }
    waiter_seconds = now() - born;
    return NULL;
}

static void *writer(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "writer");
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    double end = now() + seconds;
    while (now() < end) {
        next.tv_nsec += 30000000L;
        if (next.tv_nsec >= 1000000000L) { next.tv_sec++; next.tv_nsec -= 1000000000L; }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        if (write(pipe_fds[1], "x", 1) != 1) break;
    }
    done = 1;
    /* Wake the waiter if it is in wait_pipe; it exits at its next check. */
    if (write(pipe_fds[1], "x", 1) != 1) return NULL;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) seconds = atof(argv[1]);
    if (pipe(pipe_fds) != 0) return 1;
    pthread_t a, b;
    pthread_create(&a, NULL, waiter, NULL);
    pthread_create(&b, NULL, writer, NULL);
    pthread_join(b, NULL);
    pthread_join(a, NULL);
    printf("nap_us %.0f wait_pipe_us %.0f waiter_us %.0f\n", nap_seconds * 1e6,
           wait_pipe_seconds * 1e6, waiter_seconds * 1e6);
    return 0;
}
