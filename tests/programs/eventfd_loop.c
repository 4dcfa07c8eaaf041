/* Anonymous-inode files: an epoll fd, then an eventfd written and read argv[1] times in
 * signal_and_wait(). Both files share the kernel's one anonymous inode, and the epoll fd comes
 * first in /proc/PID/fd. System calls are issued inline (see common.h). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include "common.h"

__attribute__((noinline)) void signal_and_wait(int fd) {
    FORCE_FRAME();
    uint64_t value = 1;
    if (syscall3(SYS_write, fd, (long)&value, sizeof value) != sizeof value) exit(3);
    if (syscall3(SYS_read, fd, (long)&value, sizeof value) != sizeof value) exit(3);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: eventfd_loop ROUNDS\n");
        return 2;
    }
    int epoll = epoll_create1(0);
    int fd = eventfd(0, 0);
    if (fd < 0 || epoll < 0) return 2;
    for (int i = 0, rounds = atoi(argv[1]); i < rounds; i++) signal_and_wait(fd);
    return 0;
}
