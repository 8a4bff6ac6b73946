/* Signal-forwarding probe.
 *
 * SIGUSR1 is blocked and collected with sigwaitinfo(), so delivery cost is
 * not inflated by handler set-up and no signal can be lost between waits.
 * Each SIGUSR1 is acknowledged with the CLOCK_MONOTONIC time of its arrival;
 * SIGTERM ends the probe.
 */
#include <signal.h>

#include "common.h"

int main(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        die("sigprocmask");
    report("ready", getpid());
    for (;;) {
        int sig = sigwaitinfo(&set, NULL);
        int64_t arrived = now_ns();
        if (sig == SIGUSR1)
            report("got", arrived);
        else if (sig == SIGTERM)
            return 0;
        else if (errno != EINTR)
            die("sigwaitinfo");
    }
}
