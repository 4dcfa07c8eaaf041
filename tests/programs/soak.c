/* A service-like load for the soak benchmark: allocation, file I/O and thread churn at a high
 * rate, with a bounded live heap, for SECONDS:
 *   soak SECONDS DIR
 * Two workers each keep a ring of 4096 live blocks (16 B .. 64 KiB), replacing one per
 * iteration, append 4 KiB to a file in DIR every 64 iterations (fsync every 4096, truncate
 * at 64 MiB) and read 4 KiB back every 256; the main thread starts a short-lived thread every
 * 10 ms. Prints what it did. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define RING 4096

struct worker {
    int index;
    const char *dir;
    double end;
    unsigned long allocs, writes, reads, fsyncs;
};

static volatile unsigned long sink;

__attribute__((noinline)) static void *handle_request(size_t size) {
    char *block = malloc(size);
    if (block) block[0] = (char)size;
    return block;
}

__attribute__((noinline)) static void append_record(int fd, const char *buffer, struct worker *w) {
    if (write(fd, buffer, 4096) == 4096) w->writes++;
    if (w->writes % 4096 == 0) {
        fsync(fd);
        w->fsyncs++;
    }
    if (lseek(fd, 0, SEEK_CUR) > (64 << 20)) {
        ftruncate(fd, 0);
        lseek(fd, 0, SEEK_SET);
    }
}

static void *work(void *arg) {
    struct worker *w = arg;
    char path[4096];
    snprintf(path, sizeof path, "%s/soak-%d.log", w->dir, w->index);
    int fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
    char buffer[4096];
    memset(buffer, 'x', sizeof buffer);
    void *ring[RING] = {0};
    unsigned long seed = 88172645463325252UL + (unsigned long)w->index;
    for (unsigned long i = 0; now() < w->end; i++) {
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        size_t slot = i % RING;
        free(ring[slot]);
        ring[slot] = handle_request(16 + seed % (64 << 10));
        w->allocs++;
        if (fd >= 0 && i % 64 == 0) append_record(fd, buffer, w);
        if (fd >= 0 && i % 256 == 0 && pread(fd, buffer, sizeof buffer, 0) > 0) w->reads++;
    }
    for (int i = 0; i < RING; i++) free(ring[i]);
    if (fd >= 0) close(fd);
    unlink(path);
    return NULL;
}

static void *short_task(void *arg) {
    sink += (unsigned long)arg;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SECONDS DIR\n", argv[0]);
        return 2;
    }
    double end = now() + atof(argv[1]);
    struct worker workers[2];
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        workers[i] = (struct worker){.index = i, .dir = argv[2], .end = end};
        pthread_create(&threads[i], NULL, work, &workers[i]);
    }
    unsigned long churned = 0;
    while (now() < end) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_task, (void *)churned) == 0) {
            pthread_join(t, NULL);
            churned++;
        }
        usleep(10000);
    }
    unsigned long allocs = 0, writes = 0, reads = 0, fsyncs = 0;
    for (int i = 0; i < 2; i++) {
        pthread_join(threads[i], NULL);
        allocs += workers[i].allocs, writes += workers[i].writes;
        reads += workers[i].reads, fsyncs += workers[i].fsyncs;
    }
    printf("allocs=%lu writes=%lu reads=%lu fsyncs=%lu threads=%lu\n", allocs, writes, reads,
           fsyncs, churned);
    return 0;
}
