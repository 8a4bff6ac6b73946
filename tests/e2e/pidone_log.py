"""Reading pidone's JSON log lines out of container logs."""

from __future__ import annotations

import json

# The events of a graceful shutdown with a drain, in the order pidone logs them.
SHUTDOWN_SEQUENCE = [
    "shutdown_started",
    "drain_started",
    "drain_finished",
    "stop_signal_sent",
    "app_exited",
    "terminated",
]


def json_records(text: str) -> list[dict[str, object]]:
    """The JSON objects among the lines of *text*, in order (other lines are the app's)."""
    records = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def assert_in_order(records: list[dict[str, object]], events: list[str]) -> None:
    seen = [record.get("event") for record in records]
    positions = []
    for event in events:
        assert event in seen, f"{event!r} missing from pidone's events {seen}"
        positions.append(seen.index(event))
    assert positions == sorted(positions), f"events out of order: {seen}"


def final_record(text: str) -> dict[str, object]:
    """pidone's last line, asserted to be the "terminated" event."""
    records = json_records(text)
    assert records, f"no JSON lines from pidone:\n{text}"
    last = records[-1]
    assert last.get("event") == "terminated", f"last line is not 'terminated': {last}\n{text}"
    return last
