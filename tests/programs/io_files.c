/* Known file I/O: writes argv[2] chunks of 4 KiB to the file argv[1] in write_chunks(),
 * calling flush_data() (one fsync) after every second chunk and once at the end, then reads the
 * file back in read_back() (2 KiB reads) and deletes it. With 16 chunks: 64 KiB written, 9
 * fsyncs, 64 KiB read. Small chunks make fsync dominate by construction: each one waits for a
 * journal commit to reach the device, while a 4 KiB write only copies into the page cache
 * (under emulation, as in vm-test, a 64 KiB copy costs as much as an fsync). System calls are
 * issued inline (see common.h). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define CHUNK 4096

static char buffer[CHUNK];

__attribute__((noinline)) void flush_data(int fd) {
    FORCE_FRAME();
    syscall3(SYS_fsync, fd, 0, 0);
}

__attribute__((noinline)) void write_chunks(int fd, int chunks) {
    FORCE_FRAME();
    for (int i = 0; i < chunks; i++) {
        memset(buffer, 'a' + i % 26, sizeof buffer);
        if (syscall3(SYS_write, fd, (long)buffer, sizeof buffer) != sizeof buffer) exit(3);
        if (i % 2 == 1) flush_data(fd);
    }
    flush_data(fd);
}

__attribute__((noinline)) long read_back(int fd) {
    FORCE_FRAME();
    long total = 0, got;
    while ((got = syscall3(SYS_read, fd, (long)buffer, CHUNK / 2)) > 0) total += got;
    return total;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: io_files PATH CHUNKS\n");
        return 2;
    }
    int chunks = atoi(argv[2]);
    int fd = open(argv[1], O_CREAT | O_TRUNC | O_WRONLY, 0600);
    if (fd < 0) return 2;
    write_chunks(fd, chunks);
    close(fd);
    fd = open(argv[1], O_RDONLY);
    if (fd < 0) return 2;
    long total = read_back(fd);
    close(fd);
    unlink(argv[1]);
    return total == (long)chunks * CHUNK ? 0 : 1;
}
