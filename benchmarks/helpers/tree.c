/* Escalation probe: a tree of N processes that all ignore SIGTERM.
 *
 * SIG_IGN survives fork, so every process of the tree ignores SIGTERM and
 * only a SIGKILL can end it.  The tree has two levels below this process
 * (FANOUT branches, each with leaves) so an init must find grandchildren, not
 * just its direct child.  Every non-root process writes one byte to a pipe
 * once it exists; the root announces "ready" after reading N-1 bytes.
 */
#include <signal.h>

#include "common.h"

#define FANOUT 10

static void idle_forever(void) {
    for (;;)
        pause();
}

static void announce(int fd) {
    write_all(fd, "x", 1);
    close(fd);
}

static void branch(int leaves, int ready_fd) {
    for (int i = 0; i < leaves; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            announce(ready_fd);
            idle_forever();
        }
    }
    announce(ready_fd);
    idle_forever();
}

static void await_ready(int fd, int expected) {
    char buf[4096];
    while (expected > 0) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("read");
        expected -= (int)n;
    }
}

int main(int argc, char **argv) {
    int total = argc > 1 ? atoi(argv[1]) : 1000;
    int below = total - 1; /* processes under the root */
    int fds[2];
    if (signal(SIGTERM, SIG_IGN) == SIG_ERR)
        die("signal");
    if (pipe(fds) != 0)
        die("pipe");

    for (int b = 0; b < FANOUT && below > 0; b++) {
        /* Spread the leaves evenly: each branch takes its share of what is
         * left, minus one for the branch process itself. */
        int share = below / (FANOUT - b);
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            close(fds[0]);
            branch(share - 1, fds[1]);
        }
        below -= share;
    }
    close(fds[1]);
    await_ready(fds[0], total - 1);
    report("ready", getpid());
    idle_forever();
}
