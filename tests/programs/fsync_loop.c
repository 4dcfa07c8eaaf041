/* Waits on the device: writes 4 KiB to the file argv[1] and fdatasync()s it, argv[2] times, in
 * sync_block(), then deletes the file. Almost all its off-CPU time is the device's flush. With
 * argv[3] = "range", each block is written back with sync_file_range() instead. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

static char block[4096] = {1};

static int use_range;

__attribute__((noinline)) void sync_block(int fd, long offset) {
    FORCE_FRAME();
    if (syscall3(SYS_write, fd, (long)block, sizeof block) != sizeof block) exit(3);
    if (use_range)
        sync_file_range(fd, offset, sizeof block,
                        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                            SYNC_FILE_RANGE_WAIT_AFTER);
    else
        syscall3(SYS_fdatasync, fd, 0, 0);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: fsync_loop PATH COUNT\n");
        return 2;
    }
    use_range = argc > 3 && strcmp(argv[3], "range") == 0;
    int fd = open(argv[1], O_CREAT | O_TRUNC | O_WRONLY, 0600);
    if (fd < 0) return 2;
    for (int i = 0, count = atoi(argv[2]); i < count; i++) sync_block(fd, (long)i * sizeof block);
    close(fd);
    unlink(argv[1]);
    return 0;
}
