"""``--user USER[:GROUP]``: who the app runs as, resolved once before anything starts.

This is the step ``gosu`` and ``su-exec`` do at the end of a classic ``entrypoint.sh``, taken
inside the init, so that pidone itself keeps root (it must signal and kill whatever the app
starts, and run the init commands that fix volume ownership) while the app, and the hooks,
drains and ``exec:`` probes that act for it, run unprivileged.

Resolution follows su-exec and gosu:

* USER is a name from the user database, or a numeric uid (which needs no entry);
* GROUP is a name or a numeric gid; without it, the user's primary group from its entry.
  A numeric uid with no entry and no GROUP is refused: Docker and su-exec would silently run
  it with gid 0 (root's group), which is rarely what anyone meant;
* supplementary groups: every group that lists the user (``getgrouplist``, what
  ``initgroups`` sets) when GROUP is not given; just GROUP when it is (as gosu and su-exec do:
  naming a group replaces the user's group list);
* ``HOME`` is the entry's home directory, or ``/`` without an entry (su-exec's rule);
  ``USER`` and ``LOGNAME`` are the entry's name, and are removed for a uid without one
  (su-exec leaves them as they were, which after a root entrypoint means ``root``: wrong
  for the app's own tools).

In the child, between fork and exec (see :mod:`pidone.spawn`), the calls come in the only
order that leaves nothing of root behind: ``setgroups``, then ``setgid``, then ``setuid``
(after ``setuid`` the process could no longer change its groups). As root, ``setgid`` and
``setuid`` set the real, effective and saved ids together, so the app cannot regain root.
``--no-new-privileges`` then sets ``PR_SET_NO_NEW_PRIVS``: setuid binaries and file
capabilities no longer grant anything in the app's whole tree (``sudo``, ``su``, ``ping``'s
capability).

Only the standard library's ``pwd`` and ``grp`` (C modules, no start-up cost) are used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

CAP_SETGID = 6
CAP_SETUID = 7


class Credentials(NamedTuple):
    """Everything the child needs to become the user, resolved in advance."""

    spec: str  # as the user wrote it, for log lines
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    name: str | None  # None: a numeric uid with no entry in the user database

    def __str__(self) -> str:
        groups = ",".join(map(str, self.groups))
        return f"{self.spec} (uid {self.uid}, gid {self.gid}, groups {groups})"

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """*base* with HOME, USER and LOGNAME for the user (a nameless uid gets neither name)."""
        env = dict(base)
        env["HOME"] = self.home
        if self.name is None:  # pidone's own (root's) names would be wrong: better none
            env.pop("USER", None)
            env.pop("LOGNAME", None)
        else:
            env["USER"] = env["LOGNAME"] = self.name
        return env


def _numeric(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def parse_user(text: str) -> Credentials:
    """``USER[:GROUP]`` -> Credentials, or ValueError naming what is wrong (exit 2)."""
    import grp
    import pwd

    spec = text.strip()
    user, sep, group = spec.partition(":")
    if not user or (sep and not group):
        raise ValueError(f"{text!r} is not USER or USER:GROUP")
    uid = _numeric(user)
    try:
        entry = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(user)
    except KeyError:
        if uid is None:
            raise ValueError(f"unknown user {user!r} (not in the user database)") from None
        entry = None
    if entry is not None:
        uid = entry.pw_uid
    assert uid is not None  # a name without an entry has raised above

    if group:
        gid = _numeric(group)
        if gid is None:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise ValueError(f"unknown group {group!r} (not in the group database)") from None
        groups: tuple[int, ...] = (gid,)
    elif entry is not None:
        gid = entry.pw_gid
        groups = tuple(os.getgrouplist(entry.pw_name, gid))
    else:
        raise ValueError(
            f"user {uid} has no entry in the user database, so no primary group: "
            f"name one, e.g. {uid}:{uid}"
        )
    _check_can_switch(spec, uid, gid, groups)
    home = entry.pw_dir if entry is not None and entry.pw_dir else "/"
    return Credentials(spec, uid, gid, groups, home, entry.pw_name if entry else None)


def _check_can_switch(spec: str, uid: int, gid: int, groups: tuple[int, ...]) -> None:
    """ValueError unless this process may take on those ids (or already has them)."""
    already = (
        os.getresuid() == (uid, uid, uid)
        and os.getresgid() == (gid, gid, gid)
        and set(os.getgroups()) == set(groups)
    )
    if already:
        return
    missing = [
        name
        for bit, name in ((CAP_SETUID, "CAP_SETUID"), (CAP_SETGID, "CAP_SETGID"))
        if not _effective_capabilities() >> bit & 1
    ]
    if missing:
        raise ValueError(
            f"cannot switch to user {spec!r}: pidone runs as uid {os.geteuid()} "
            f"without {' and '.join(missing)} (start pidone as root to use --user)"
        )


def _effective_capabilities() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    # No /proc: root is assumed to hold every capability, anyone else none.
    return ~0 if os.geteuid() == 0 else 0
