/* Reads from a pipe in read_pipe() and from a socket pair in read_socket(), argv[1] messages
 * of 100 bytes each (default 50), fed by a second thread every 2 ms (so the run lasts long
 * enough for its memory map to be read). System calls are issued inline. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "common.h"

static int pipe_fds[2];
static int socket_fds[2];
static int messages = 50;

static void *feeder(void *arg) {
    (void)arg;
    char message[100] = {0};
    struct timespec pause = {0, 2000000};
    for (int i = 0; i < messages; i++) {
        syscall3(SYS_nanosleep, (long)&pause, 0, 0);
        syscall3(SYS_write, pipe_fds[1], (long)message, sizeof message);
        syscall3(SYS_write, socket_fds[1], (long)message, sizeof message);
    }
    return NULL;
}

__attribute__((noinline)) long read_pipe(void) {
    FORCE_FRAME();
    char message[100];
    return syscall3(SYS_read, pipe_fds[0], (long)message, sizeof message);
}

__attribute__((noinline)) long read_socket(void) {
    FORCE_FRAME();
    char message[100];
    return syscall3(SYS_read, socket_fds[0], (long)message, sizeof message);
}

int main(int argc, char **argv) {
    if (argc > 1) messages = atoi(argv[1]);
    if (pipe(pipe_fds) || socketpair(AF_UNIX, SOCK_STREAM, 0, socket_fds)) return 2;
    pthread_t thread;
    pthread_create(&thread, NULL, feeder, NULL);
    long total = 0;
    for (int i = 0; i < messages; i++) {
        long got = read_pipe();
        /* A stream socket may split messages; read until one message's bytes arrived. */
        long want = 100;
        while (want > 0) {
            long n = read_socket();
            if (n <= 0) return 3;
            want -= n;
            total += n;
        }
        total += got;
    }
    pthread_join(thread, NULL);
    return total == 200L * messages ? 0 : 1;
}
