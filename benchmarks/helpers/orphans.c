/* Reaping probe: hand N zombies to the init and time how long they linger.
 *
 * A middle process forks N children that exit at once, then exits itself
 * without waiting for them, so the kernel re-parents every zombie (and any
 * child that has not exited yet) to the init.  This process then polls the
 * recorded pids with kill(pid, 0) until every one of them is gone; a zombie
 * still answers kill(0), a reaped pid does not.  Nothing else forks in the
 * namespace meanwhile, so the pids cannot be reused under our feet.
 *
 * Reports "reaped <ns>" (time from the middle's exit to the last reap) or
 * "timeout <remaining>" after a bounded wait.
 */
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "common.h"

#define TIMEOUT_NS (60LL * 1000000000LL)

struct shared {
    int64_t handed_over_ns; /* written by the middle just before it exits */
    int count;
    pid_t pids[];
};

static void middle(struct shared *sh, int n) {
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0)
            _exit(0);
        sh->pids[sh->count++] = pid;
    }
    sh->handed_over_ns = now_ns();
    _exit(0);
}

/* One pass over the still-present pids; returns how many remain. */
static int sweep(pid_t *pids, int remaining) {
    int kept = 0;
    for (int i = 0; i < remaining; i++)
        if (kill(pids[i], 0) == 0 || errno != ESRCH)
            pids[kept++] = pids[i];
    return kept;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    size_t size = sizeof(struct shared) + (size_t)n * sizeof(pid_t);
    struct shared *sh = mmap(NULL, size, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        die("mmap");

    pid_t mid = fork();
    if (mid < 0)
        die("fork");
    if (mid == 0)
        middle(sh, n);
    if (waitpid(mid, NULL, 0) != mid)
        die("waitpid");

    int remaining = sh->count;
    /* A short pause between sweeps keeps this poller from starving the init
     * on a 2-core machine while keeping the resolution well under 1 ms. */
    const struct timespec pause_between = {0, 50 * 1000};
    while ((remaining = sweep(sh->pids, remaining)) > 0) {
        if (now_ns() - sh->handed_over_ns > TIMEOUT_NS) {
            report("timeout", remaining);
            return 1;
        }
        nanosleep(&pause_between, NULL);
    }
    report("reaped", now_ns() - sh->handed_over_ns);
    return 0;
}
