/* File descriptors replaced after their open: the file argv[1] is opened and written once
 * (4 KiB), then its fd is replaced by a pipe's write end with dup2() and written ten times
 * (100 bytes each); the file argv[2] is opened, closed by close_range(), and its fd number is
 * reused by a new pipe's read end, read once (10 bytes). Both files are deleted at the end.
 * System calls are issued inline (see common.h). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "common.h"

static char block[4096];

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: fd_reuse FILE_A FILE_B\n");
        return 2;
    }
    int a = open(argv[1], O_CREAT | O_TRUNC | O_WRONLY, 0600);
    if (a < 0 || syscall3(SYS_write, a, (long)block, sizeof block) != sizeof block) return 2;
    int first[2];
    if (pipe(first) != 0 || syscall3(SYS_dup2, first[1], a, 0) != a) return 2;
    for (int i = 0; i < 10; i++)
        if (syscall3(SYS_write, a, (long)block, 100) != 100) return 3;

    int b = open(argv[2], O_CREAT | O_TRUNC | O_RDWR, 0600);
    if (b < 0 || syscall3(SYS_close_range, b, b, 0) != 0) return 2;
    int second[2];
    if (pipe(second) != 0 || second[0] != b) return 4;
    if (syscall3(SYS_write, second[1], (long)block, 10) != 10) return 3;
    if (syscall3(SYS_read, b, (long)block, 10) != 10) return 3;
    unlink(argv[1]);
    unlink(argv[2]);
    return 0;
}
