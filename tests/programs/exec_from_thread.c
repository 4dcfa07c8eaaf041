/* Runs argv[1] with argv[1..] from a thread other than the main one: the kernel gives the
 * executing thread the leader's tid, and the old leader dies first. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static char **program;

static void *exec_program(void *arg) {
    (void)arg;
    execv(program[0], program);
    perror("execv");
    _exit(1);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: exec_from_thread PROGRAM [ARGS...]\n");
        return 2;
    }
    program = argv + 1;
    pthread_t thread;
    pthread_create(&thread, NULL, exec_program, NULL);
    for (;;) pause(); /* until the exec ends this thread */
}
