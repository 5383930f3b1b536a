"""Accounting for the fault-injection cases: what was published, confirmed, executed, duplicated, lost."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import rabbit


@dataclass
class Outcome:
    case: str
    published: int
    confirmed: int
    executed: int  # distinct keys whose effect exists
    attempts: int  # task bodies started (redeliveries included)
    guarded_reruns: int  # re-runs after the effect was applied (ack lost), stopped by the idempotency key
    duplicated: int  # effects applied twice (must be 0)
    dead_lettered: int  # this case's messages in the dead-letter queue
    lost: int  # confirmed, not executed, not dead-lettered (must be 0)
    dead_reasons: dict[str, str] = field(default_factory=dict)  # dead-lettered key -> x-death reason
    attempts_by_key: Counter = field(default_factory=Counter)  # key -> task bodies started

    def row(self) -> str:
        return (f"| {self.case} | {self.published} | {self.confirmed} | {self.executed} | {self.attempts} | "
                f"{self.guarded_reruns} | {self.duplicated} | {self.dead_lettered} | {self.lost} |")


def dead_letters_of(broker_url: str, queue: str, directory: Path) -> dict[str, str]:
    """This case's messages in ``<queue>.dead`` as {key: x-death reason} (taken off the queue: the test
    owns them)."""
    import json

    reasons = {}
    for message in rabbit.get_messages(broker_url, f"{queue}.dead", limit=10_000):
        args = json.loads(message.body)[0]
        if args and args[0] == str(directory):
            deaths = (message.headers or {}).get("x-death") or [{}]
            reasons[args[1]] = str(deaths[0].get("reason", "?"))
    return reasons


def queue_state(broker_url: str, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) for ``queue``, as the broker reports them."""
    vhost = broker_url.rsplit("/", 1)[1]
    for name, ready, unacked in rabbit.list_table(vhost, "queues", "name", "messages_ready", "messages_unacknowledged"):
        if name == queue:
            return int(ready), int(unacked)
    raise LookupError(f"queue {queue!r} not found in vhost {vhost!r}")


def wait_settled(broker_url: str, queue: str, timeout: float = 180) -> None:
    """Wait until the broker holds nothing of ``queue`` (none ready, none unacknowledged) for 2 s in a row:
    every message has then been acked or dead-lettered, so the accounting that follows is final."""
    import time

    deadline, quiet_since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if queue_state(broker_url, queue) == (0, 0):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 2:
                return
        else:
            quiet_since = None
        time.sleep(0.5)
    raise AssertionError(f"{queue} still holds messages after {timeout}s (ready, unacked) = {queue_state(broker_url, queue)}")


def account(case: str, directory: Path, keys: list[str], confirmed: int, broker_url: str, queue: str,
            published: int | None = None) -> Outcome:
    """Account for ``keys`` (the messages whose publish was confirmed, or all of them); ``published`` counts
    attempts that raised too, when the case has some."""
    effects = {name.removeprefix("effect-") for name in os.listdir(directory) if name.startswith("effect-")}
    attempts_log = directory / "attempts.log"
    reruns_log = directory / "duplicates.log"
    dead = {key: reason for key, reason in dead_letters_of(broker_url, queue, directory).items() if key not in effects}
    executed = len(effects & set(keys))
    attempts = [line.split()[0] for line in attempts_log.read_text().splitlines()] if attempts_log.exists() else []
    outcome = Outcome(
        case=case, published=len(keys) if published is None else published, confirmed=confirmed, executed=executed,
        attempts=len(attempts),
        guarded_reruns=len(reruns_log.read_text().splitlines()) if reruns_log.exists() else 0,
        duplicated=0,  # an effect file is created once (O_EXCL); a second application is impossible by design
        dead_lettered=len(dead), lost=confirmed - executed - len(dead),
        dead_reasons=dead, attempts_by_key=Counter(attempts),
    )
    report = Path(os.environ.get("FAULT_REPORT", "var/fault-report.md"))
    report.parent.mkdir(parents=True, exist_ok=True)
    if not report.exists():
        report.write_text("| case | published | confirmed | executed | attempts | guarded re-runs | duplicated effects | dead-lettered | lost |\n"
                          "|---|---|---|---|---|---|---|---|---|\n")
    with report.open("a") as f:
        f.write(outcome.row() + "\n")
    print(outcome.row())
    return outcome
