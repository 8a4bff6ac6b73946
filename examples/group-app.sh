#!/bin/sh
# A shell-script "app" that starts background jobs: the classic case for
#
#     pidone --signal-to group -- sh examples/group-app.sh
#
# A shell does not pass SIGTERM on to its background jobs. With the default
# `--signal-to child` only this script would get the stop signal; the workers
# would keep running until pidone's --grace deadline and then be SIGKILLed
# (pidone waits for *all* descendants, not just the app). With
# `--signal-to group` pidone signals the app's whole process group: the script
# and every worker (and their `sleep`s) get SIGTERM at once and each cleans up.
#
# Options (environment): WORKERS (default 2), CLEANUP_SECONDS (default 1).

WORKERS=${WORKERS:-2}
CLEANUP_SECONDS=${CLEANUP_SECONDS:-1}

say() { echo "group-app[$1]: $2"; }

worker() {
    name="worker-$1"
    trap 'say "$name" "got SIGTERM, finishing current job"; sleep "$CLEANUP_SECONDS"; say "$name" "done"; exit 0' TERM
    say "$name" "started"
    while :; do
        # `sleep & wait` instead of a bare `sleep`: the trap runs as soon as the
        # signal arrives instead of after the sleep finishes.
        sleep 5 &
        wait $!
    done
}

i=1
while [ "$i" -le "$WORKERS" ]; do
    worker "$i" &
    i=$((i + 1))
done

trap 'say main "got SIGTERM, waiting for workers"; wait; say main "all workers done, bye"; exit 0' TERM INT
say main "started $WORKERS workers, waiting (pid $$)"
# `wait` returns early when a trapped signal arrives; loop so that a worker
# exiting on its own does not end the script.
while :; do
    wait
    sleep 1 &
    wait $!
done
