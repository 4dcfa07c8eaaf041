/* The bundled demo (`cargo xtask demo`): a small "service" that, for argv[1] seconds (default
 * 3), parses rows (CPU in parse_row), flushes a log with fsync after every tenth row (I/O and
 * off-CPU time in flush_log) and caches an entry every twentieth row that it never frees (a
 * leak from cache_insert). The log is argv[2] (default ./demo.log), deleted at the end. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static volatile unsigned long sink;
static char line[4096];
void *volatile cache[4096];
static int cached;

__attribute__((noinline)) void parse_row(void) {
    FORCE_FRAME();
    double end = now() + 0.004;
    SPIN_UNTIL(end, sink);
}

__attribute__((noinline)) void flush_log(int fd) {
    FORCE_FRAME();
    memset(line, 'x', sizeof line);
    syscall3(SYS_write, fd, (long)line, sizeof line);
    syscall3(SYS_fsync, fd, 0, 0);
}

__attribute__((noinline)) void cache_insert(void) {
    FORCE_FRAME();
    char *entry = malloc(64 * 1024);
    memset(entry, 1, 64 * 1024);
    if (cached < 4096) cache[cached++] = entry;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 3.0;
    const char *path = argc > 2 ? argv[2] : "demo.log";
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    if (fd < 0) return 2;
    double end = now() + seconds;
    for (long row = 0; now() < end; row++) {
        parse_row();
        if (row % 10 == 0) flush_log(fd);
        if (row % 20 == 0) cache_insert();
    }
    close(fd);
    unlink(path);
    return 0;
}
