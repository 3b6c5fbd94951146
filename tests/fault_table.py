"""Render docs/delivery.md's fault table from test-artifacts/faults-summary.jsonl.

`python -m tests.fault_table` prints the table for the latest entry of each scenario (run
`pytest -m faults` first); paste it into docs/delivery.md. Every figure is measured by
tests/test_faults.py, none is typed in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.support import ARTIFACTS

SCENARIOS = {
    "broker_cut_twice": "broker links cut twice during the burst",
    "worker_sigkill_x3": "worker SIGKILLed three times, mid-job",
    "database_cut_5s": "PostgreSQL links cut for 5 s while jobs run",
    "worker_sigterm": "SIGTERM under load, then a new worker",
    "corrupt_and_poison": "corrupt image + poison message mid-burst",
}


def proof(entry: dict[str, object]) -> str:
    """What the scenario measured to show its fault happened."""
    name = entry["scenario"]
    if name == "broker_cut_twice":
        return f"links cut {entry['links_cut']}; {entry['accepted_as_new']} uploads kept NEW"
    if name == "worker_sigkill_x3":
        finished = entry.get("finished_by_a_killed_worker", 0)
        return (
            f"jobs in flight at each kill: {entry['in_flight_at_kill']};"
            f" {finished} finished by a killed worker before its job_done line"
        )
    if name == "database_cut_5s":
        return f"{entry['links_cut'][0]} links cut; readiness 503"  # type: ignore[index]
    if name == "worker_sigterm":
        return f"{entry['in_flight_at_sigterm']} in flight at SIGTERM, drained, 0 unfinished"
    return f"{entry['dead_letters']} dead letter; corrupt one ERROR"


def refused(entry: dict[str, object]) -> str:
    count = entry["refused"]
    if not count:
        return "0"
    kinds = ", ".join(str(kind) for kind in entry["refusals"])  # type: ignore[attr-defined]
    return f"{count} ({kinds})"


def table(entries: list[dict[str, object]]) -> str:
    latest = {str(entry["scenario"]): entry for entry in entries}
    rows = [
        "| scenario | fault proven by | accepted | refused | lost | duplicated | redelivered"
        " (already finished) | broker redeliveries | relay republished | retried | recovery s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, title in SCENARIOS.items():
        if name not in latest:
            continue
        e = latest[name]
        rows.append(
            f"| {title} | {proof(e)} | {e['accepted']} | {refused(e)} | {e['lost']} |"
            f" {e['duplicated']} | {e['redelivered']} | {e.get('broker_redeliveries', '-')} |"
            f" {e.get('relay_republished', '-')} | {e['retried']} | {e['recovery_seconds']} |"
        )
    commits = sorted({str(latest[name]["commit"]) for name in latest})
    return "\n".join(rows) + f"\n\nMeasured at commit {', '.join(commits)}.\n"


def main(path: Path = ARTIFACTS / "faults-summary.jsonl") -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    if not lines:
        sys.exit(f"no fault figures in {path}: run `pytest -m faults` first")
    sys.stdout.write(table([json.loads(line) for line in lines]))


if __name__ == "__main__":
    main()
