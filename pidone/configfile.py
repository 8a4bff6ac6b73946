"""Settings from a TOML file (``--config FILE`` / ``PIDONE_CONFIG``).

The file holds every option under its own name (``grace = 8``,
``drain = ["cmd1", "cmd2"]``), repeatable options as arrays (a single value
is allowed too), and the probes as tables::

    [probes.liveness]
    target = "http://127.0.0.1:8080/healthz"
    period = 5

which stand for the flat options ``liveness-probe``, ``liveness-period`` and
so on.  Every value is turned back into text and goes through the same pure
parser as the command line, so the file accepts exactly what the flags do.
The result is text values keyed by :attr:`pidone.options.Option.key`;
:mod:`pidone.settings` ranks them (command line > environment > file >
defaults), and click takes them as its ``default_map`` for its messages.

At most :data:`MAX_BYTES` (1 MiB) are read: a config file is a few hundred
bytes, and ``--config /dev/zero`` (or a huge file by mistake) must be one
line of error, not gigabytes of memory before anything starts.

Any mistake is reported as ``FILE:LINE: key 'NAME': REASON``.  tomllib gives
no positions, so the line is found by scanning the text for the key, and
only when there is something to report: the fast path pays for ``tomllib``
and nothing else, and only when a file is given.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

from pidone.config import PROBES
from pidone.options import BY_NAME, NUMERIC_KINDS, Option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# The most read from a config file; anything longer is refused.
MAX_BYTES = 1024 * 1024
# Keys of a [probes.KIND] table -> the suffix of the flat option they stand for.
PROBE_KEYS = {
    "target": "probe",
    "initial-delay": "initial-delay",
    "period": "period",
    "timeout": "timeout",
    "failure-threshold": "failure-threshold",
    "success-threshold": "success-threshold",
}
# Keys of a [sidecars.NAME] table -> the repeatable NAME=VALUE option they stand for.
SIDECAR_KEYS = {
    "command": "sidecar",
    "ready": "sidecar-ready",
    "stop-signal": "sidecar-stop-signal",
    "restart-delay": "sidecar-restart-delay",
    "restart-delay-max": "sidecar-restart-delay-max",
}
# Option names that only make sense on the command line.
NOT_IN_FILE = frozenset({"config", "check"})

KeyPath = tuple[str, ...]
FileValue = str | list[str]


class ConfigFileError(ValueError):
    """A config file that cannot be used; the message is one line, ready to print."""


class Loaded(NamedTuple):
    """A config file, read and checked."""

    path: str
    values: dict[str, FileValue]  # by Option.key, as text
    keys: dict[str, KeyPath]  # by Option.key: where in the file the value was
    errors: list[str]  # one line each, FILE[:LINE]: ...
    text: str

    def line(self, key: str) -> int | None:
        """The line that set option ``key`` (an Option.key), if it can be found."""
        keypath = self.keys.get(key)
        return None if keypath is None else find_line(self.text, keypath)


def load(path: str) -> dict[str, FileValue]:
    """The file's values (a click ``default_map``); ConfigFileError for the first mistake."""
    loaded = read(path)
    if loaded.errors:
        raise ConfigFileError(loaded.errors[0])
    return loaded.values


def read(path: str) -> Loaded:
    """Read and check ``path``, collecting every mistake instead of stopping at the first."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return Loaded(path, {}, {}, [f"{path}: cannot read config file: {reason}"], "")
    if len(data) > MAX_BYTES:
        return Loaded(path, {}, {}, [f"{path}: config file is larger than 1 MiB"], "")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        return Loaded(path, {}, {}, [f"{path}: config file is not UTF-8 text: {exc}"], "")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return Loaded(path, {}, {}, [_toml_error(path, exc)], text)
    values: dict[str, FileValue] = {}
    keys: dict[str, KeyPath] = {}
    problems: list[tuple[KeyPath, str]] = []
    for keypath, option, raw in _entries(document, problems):
        if keypath[0] == "sidecars" and keys.get(option.key, keypath)[0] == "sidecars":
            _add_sidecar_value(option, keypath, raw, values, keys, problems)
            continue
        if option.key in keys:
            other = ".".join(keys[option.key])
            problems.append((keypath, f"sets {option.name!r} again (already set by {other!r})"))
            continue
        try:
            value = _text(option, raw)
            for text_value in value if isinstance(value, list) else [value]:
                option.parse(text_value)
        except ValueError as exc:
            problems.append((keypath, str(exc)))
            continue
        values[option.key] = value
        keys[option.key] = keypath
    errors = [_key_error(path, text, keypath, reason) for keypath, reason in problems]
    return Loaded(path, values, keys, errors, text)


def _entries(
    document: Mapping[str, object], problems: list[tuple[KeyPath, str]]
) -> Iterator[tuple[KeyPath, Option, object]]:
    """Each (key path, option, TOML value) in the file; mistakes go to ``problems``."""
    for name, value in document.items():
        if name == "probes":
            yield from _probe_entries(value, problems)
            continue
        if name == "sidecars":
            yield from _sidecar_entries(value, problems)
            continue
        option = BY_NAME.get(name)
        if option is None or name in NOT_IN_FILE:
            problems.append(((name,), _unknown(name, [*BY_NAME, "probes", "sidecars"])))
            continue
        yield (name,), option, value


def _probe_entries(
    probes: object, problems: list[tuple[KeyPath, str]]
) -> Iterator[tuple[KeyPath, Option, object]]:
    if not isinstance(probes, dict):
        reason = f"expected a table of probes ([probes.liveness] ...), got {_kind(probes)}"
        problems.append((("probes",), reason))
        return
    for kind, table in probes.items():
        keypath: KeyPath = ("probes", kind)
        if kind not in PROBES:
            problems.append((keypath, _unknown(kind, PROBES)))
            continue
        if not isinstance(table, dict):
            problems.append((keypath, f"expected a table, got {_kind(table)}"))
            continue
        for key, value in table.items():
            option = BY_NAME.get(f"{kind}-{PROBE_KEYS[key]}") if key in PROBE_KEYS else None
            if option is None:
                allowed = [k for k in PROBE_KEYS if f"{kind}-{PROBE_KEYS[k]}" in BY_NAME]
                reason = (
                    f"unknown key: a {kind} probe has no {key}"
                    if key in PROBE_KEYS
                    else _unknown(key, allowed)
                )
                problems.append(((*keypath, key), reason))
                continue
            yield (*keypath, key), option, value


def _sidecar_entries(
    sidecars: object, problems: list[tuple[KeyPath, str]]
) -> Iterator[tuple[KeyPath, Option, object]]:
    """``[sidecars.NAME]`` tables, in the file's order (the start order)."""
    if not isinstance(sidecars, dict):
        reason = f"expected a table of sidecars ([sidecars.proxy] ...), got {_kind(sidecars)}"
        problems.append((("sidecars",), reason))
        return
    for name, table in sidecars.items():
        keypath: KeyPath = ("sidecars", name)
        if not isinstance(table, dict):
            problems.append((keypath, f"expected a table, got {_kind(table)}"))
            continue
        if "command" not in table:
            problems.append((keypath, "a sidecar needs a command"))
            continue
        for key in ("command", *(k for k in table if k != "command")):  # the command first
            if key not in SIDECAR_KEYS:
                problems.append(((*keypath, key), _unknown(key, SIDECAR_KEYS)))
                continue
            yield (*keypath, key), BY_NAME[SIDECAR_KEYS[key]], table[key]


def _add_sidecar_value(  # noqa: PLR0913, PLR0917 - read()'s state, handed over whole
    option: Option,
    keypath: KeyPath,
    raw: object,
    values: dict[str, FileValue],
    keys: dict[str, KeyPath],
    problems: list[tuple[KeyPath, str]],
) -> None:
    """One table key becomes one ``NAME=VALUE`` text of its repeatable option."""
    name = keypath[1]
    if option.name == "sidecar" and isinstance(raw, list) and raw:
        if not all(isinstance(item, str) for item in raw):
            problems.append((keypath, "expected an array of strings (the command's words)"))
            return
        import shlex

        raw = shlex.join(raw)  # the exec form, as a Dockerfile's CMD ["nginx", "-g", ...]
    numeric = option.name not in ("sidecar", "sidecar-ready")  # a signal, a duration
    if isinstance(raw, bool) or not isinstance(raw, str | int | float if numeric else str):
        also = "a string or a number" if numeric else "a string"
        if option.name == "sidecar":
            also += " or an array of strings"
        problems.append((keypath, f"expected {also}, got {_kind(raw)}"))
        return
    text = f"{name}={raw}"
    try:
        option.parse(text)
    except ValueError as exc:
        problems.append((keypath, str(exc)))
        return
    listed = values.setdefault(option.key, [])
    assert isinstance(listed, list)
    listed.append(text)
    keys.setdefault(option.key, keypath)


def _unknown(name: str, allowed: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(allowed), n=1)
    return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")


def _text(option: Option, value: object) -> FileValue:
    """The TOML value as the text the command line would have given."""
    if option.flag:  # a flag: true or false (or the words the environment takes)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return value
        raise ValueError(f"expected true or false, got {_kind(value)}")
    numeric = option.kind in NUMERIC_KINDS
    scalar = "a number or a string" if numeric else "a string"
    if not option.multiple:
        return _scalar(value, numeric, f"expected {scalar}")
    if not isinstance(value, list):
        also = "a number, a string" if numeric else "a string"
        also += " or an array of them" if numeric else " or an array of strings"
        return [_scalar(value, numeric, f"expected {also}")]
    return [
        _scalar(item, numeric, f"array item {index}: expected {scalar}")
        for index, item in enumerate(value, start=1)
    ]


def _scalar(value: object, numeric: bool, expected: str) -> str:
    if isinstance(value, str):
        return value
    # bool before int: True is an int to Python, never a number of seconds here.
    if numeric and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if numeric and isinstance(value, float):
        return repr(value)  # shortest round-trip form; 'inf' and 'nan' are refused later
    raise ValueError(f"{expected}, got {_kind(value)}")


def _kind(value: object) -> str:
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    )
    for cls, name in kinds:
        if isinstance(value, cls):
            return name
    return "a date/time"


def _toml_error(path: str, exc: Exception) -> str:
    import re

    message = str(exc)
    found = re.search(r"\(at line (\d+), column \d+\)", message)
    where = f"{path}:{found.group(1)}" if found else path
    return f"{where}: invalid TOML: {message}"


def _key_error(path: str, text: str, keypath: KeyPath, reason: str) -> str:
    line = find_line(text, keypath)
    where = f"{path}:{line}" if line is not None else path
    return f"{where}: key {'.'.join(keypath)!r}: {reason}"


# Finding a key's line ------------------------------------------------------------

_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"


def find_line(text: str, keypath: KeyPath) -> int | None:
    """The 1-based line where ``keypath`` is set, or the nearest enclosing key's line.

    Understands ``[table]`` / ``[[array]]`` headers, dotted keys and quoted
    keys; skips multi-line strings.  Good enough to point at a mistake.
    """
    found = _key_lines(text)
    for end in range(len(keypath), 0, -1):
        line = found.get(keypath[:end])
        if line is not None:
            return line
    return None


def _key_lines(text: str) -> dict[KeyPath, int]:
    import re

    header = re.compile(rf"\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
    assignment = re.compile(rf"\s*({_DOTTED})\s*=")
    inline_key = re.compile(rf"[{{,]\s*({_DOTTED})\s*=")
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string is not None:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        match = header.match(line)
        if match:
            table = _split_key(match.group(1))
            lines.setdefault(table, number)
            continue
        match = assignment.match(line)
        if not match:
            continue
        keypath = (*table, *_split_key(match.group(1)))
        lines.setdefault(keypath, number)
        rest = line[match.end() :]
        for inner in inline_key.finditer(rest):  # one level of inline table is enough
            lines.setdefault((*keypath, *_split_key(inner.group(1))), number)
        for quotes in ('"""', "'''"):
            if rest.count(quotes) % 2 == 1:
                in_string = quotes
    return lines


def _split_key(dotted: str) -> KeyPath:
    import re

    parts = re.findall(_KEY, dotted)
    return tuple(part[1:-1] if part[:1] in "\"'" else part for part in parts)
