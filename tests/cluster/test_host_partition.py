"""A worker host cut off from the cluster for longer than the heartbeat, then healed, under load.

io1: its link goes down while it holds unacknowledged mail-lane work, keyed test tasks and real
transactional mail (apps/mail, delivered to a real SMTP server on the bridge); RabbitMQ drops its
connection after the missed heartbeats and redelivers that work to io2. Every mail reaches the SMTP server
once (the claim lease admits one delivery), and io1's late acknowledgements, after the heal, harm nothing.

cpu1: its link goes down while it works on a dataset import's chunks; cpu2 takes the import over and the
dataset settles once: READY, one profile, the counts of the file.

Counted like the node cases (var/cluster-report.md).
"""
import time
from pathlib import Path

import pytest

from project import topology
from tests.cluster.conftest import HEARTBEAT, host_worker_env
from tests.cluster.load import Load, Outcome, write_report_row
from tests.support import cluster
from tests.support.workers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]

MAIL_EVERY = 0.1  # seconds between two transactional mails enqueued by the test (beside the keyed load)


class MailStream:
    """Real transactional mail through apps.mail.services.enqueue, one message at a time from this thread,
    each to its own address, so the SMTP server's copies can be counted per message."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.messages = []  # (message id, address, enqueued at, seconds the enqueue took, error)

    def send(self, count: int = 1) -> None:
        from apps.mail import services

        for _ in range(count):
            address = f"{self.prefix}{len(self.messages)}@accept.test"
            started = time.time()
            try:
                message, _ = services.enqueue(to=[address], subject=f"partition {address}", body="hello")
                self.messages.append((message.pk, address, started, time.time() - started, ""))
            except Exception as exc:  # noqa: BLE001 - an error is an answer: counted, not hidden
                self.messages.append((None, address, started, time.time() - started, f"{type(exc).__name__}: {exc}"))

    def burst(self, count: int) -> None:
        """``count`` mails in one transaction: their task messages are published together at its commit,
        faster than the io hosts deliver them, so each host holds some unacknowledged when this returns."""
        from django.db import transaction

        with transaction.atomic():
            self.send(count)

    def send_for(self, seconds: float) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.send()
            time.sleep(MAIL_EVERY)

    def stored(self):
        return [(pk, address) for pk, address, _, _, error in self.messages if pk is not None]


def mail_outcome(case: str, stream: MailStream, smtp_sink, fault_at: float) -> tuple[Outcome, dict]:
    """The mail row: enqueued, stored, raised; SENT; copies at the SMTP server per message."""
    from apps.mail.models import Message, Status

    rows = {m.pk: m for m in Message.objects.filter(pk__in=[pk for pk, _ in stream.stored()])}
    copies = {address: len(smtp_sink.behaviour.messages_to(address)) for _, address in stream.stored()}
    sent = [pk for pk, _ in stream.stored() if rows[pk].status == Status.SENT]
    arrivals = sorted(r.at for r in list(smtp_sink.behaviour.received) if r.at >= fault_at - 1
                      and any(a.startswith(stream.prefix) for a in r.rcpt_tos))
    outcome = Outcome(
        case=case, published=len(stream.messages), confirmed=len(stream.stored()),
        raised=sum(bool(error) for *_, error in stream.messages), executed=len(sent),
        guarded_reruns=sum(1 for m in rows.values() if m.attempts > 1),
        duplicated=sum(n - 1 for n in copies.values() if n > 1), dead_lettered=0,
        lost=sum(1 for n in copies.values() if n == 0),
        stall=max((b - a for a, b in zip(arrivals, arrivals[1:])), default=0.0),
        longest_publish=max((took for _, _, _, took, _ in stream.messages), default=0.0),
        errors=sorted({error.split(":")[0] for *_, error in stream.messages if error}),
    )
    details = {
        "statuses": {status: sum(1 for m in rows.values() if m.status == status) for status in Status.values},
        "claimed_more_than_once": outcome.guarded_reruns,
    }
    write_report_row(outcome)
    print(outcome.row(), details)
    return outcome, details


def senders(rows, worker) -> int:
    """How many of these mail rows the worker's process recorded as its claim (claimed_by host:pid:task)."""
    pids = {str(pid) for pid in [worker.pid, *worker.children()]}
    return sum(1 for m in rows if m.claimed_by.split(":")[1:2] and m.claimed_by.split(":")[1] in pids)


def test_worker_host_partition_longer_than_the_heartbeat_then_healed(cluster_vhost, cluster_db_url, host_workers,
                                                                    smtp_sink, sender_mail_limits, tmp_path):
    from apps.mail.models import Message, Status

    cluster.run("host-up", "io2", "23")
    second = cluster.HostWorker("io2", "io", cluster.broker_url(cluster_vhost), cluster_db_url,
                                env=host_worker_env(smtp_sink, IO_CONCURRENCY=20))
    mail = MailStream(f"p{int(time.time())}-")
    try:
        second.start().wait_ready(timeout=120)
        cut_off = host_workers["io"]
        load = Load(tmp_path).start()
        try:
            wait_for(lambda: len(load.effects(topology.MAIL)) >= 50, timeout=60, message="load on the mail lane")
            mail.send_for(3)
            mail.burst(150)  # io1 holds unacknowledged mail when its link goes down
            fault_at = time.time()
            cluster.cut("io1")
            # Past RabbitMQ's missed-heartbeat limit: io1's unacked work is requeued; mail keeps coming.
            mail.send_for(3 * HEARTBEAT)
            cluster.heal("io1")
            wait_for(lambda: "Connected to amqp" in cut_off.log()[-20000:], timeout=120, message="io1 reconnecting")
            mail.send_for(5)
        finally:
            cluster.heal("io1")
            load.stop()
        load.wait_processed([*host_workers.values(), second])
        wait_for(lambda: not Message.objects.filter(pk__in=[pk for pk, _ in mail.stored()])
                 .exclude(status__in=[Status.SENT, Status.FAILED, Status.TIMED_OUT]).exists(),
                 timeout=180, interval=1, message="every mail to reach a final state")
        time.sleep(2)  # a second copy, if one were coming, would be on its way by now
        outcome = load.account(f"worker host io1 cut off {3 * HEARTBEAT} s (heartbeat {HEARTBEAT} s), healed; io2 "
                               "takes its work", cluster.broker_url(cluster_vhost), fault_at)
        mails, details = mail_outcome(f"the same io1 partition: transactional mail (apps.mail, real SMTP server); "
                                      "row = mails", mail, smtp_sink, fault_at)
        rows = list(Message.objects.filter(pk__in=[pk for pk, _ in mail.stored()]))
        io2_ran = sum(1 for line in (tmp_path / topology.MAIL / "attempts.log").read_text().splitlines()
                      if line.split()[1] in {str(pid) for pid in [second.pid, *second.children()]})
        io2_sent = senders(rows, second)
        after_fault = [m for m in rows if m.created_at.timestamp() >= fault_at]
        # io1's unacknowledged mail ran elsewhere: messages whose task io1 had received, delivered by io2.
        io1_log = cut_off.log()
        received_by_io1 = {m.task_id for m in rows if f"mail.send_message[{m.task_id}] received" in io1_log}
        taken_over = senders([m for m in rows if m.task_id in received_by_io1], second)
        print(f"mail: io1 received {len(received_by_io1)} delivery tasks, io2 delivered {taken_over} of them; "
              f"io2 delivered {io2_sent} in all")
    finally:
        second.stop()
        cluster.run("host-down", "io2", check=False)

    assert outcome.lost == 0 and outcome.duplicated == 0, outcome
    assert outcome.confirmed > 100 and outcome.executed == outcome.confirmed - outcome.dead_lettered
    assert io2_ran > 0, "io2 never ran mail-lane work"
    assert outcome.stall <= 2 * HEARTBEAT, f"processing stalled {outcome.stall:.1f}s (> two heartbeats)"
    # Mail: each message delivered exactly once at the SMTP server, none lost or doubled; every row SENT,
    # or TIMED_OUT where io1's link went down after it had sent the end of DATA: the server had the mail
    # but io1 never got the reply, and the mail lane's rule for that is "maybe delivered, never resent
    # blindly" (a run had 12 of 477). Only io1, the host cut mid-conversation, may leave that state.
    assert mails.raised == 0 and mails.confirmed == mails.published > 200, mails
    assert mails.duplicated == 0 and mails.lost == 0, (mails, details)
    timed_out = [m for m in rows if m.status == Status.TIMED_OUT]
    assert mails.executed + len(timed_out) == mails.confirmed, details
    assert senders(timed_out, cut_off) == len(timed_out), [m.claimed_by for m in timed_out]
    assert io2_sent > 0 and after_fault, "io2 sent no mail while io1 was cut off"
    assert taken_over > 0, "no mail io1 had received was delivered by io2"
    assert cut_off.alive(), cut_off.log()[-3000:]
    assert "Connection to broker lost" in cut_off.log() or "missed heartbeats" in cut_off.log(), cut_off.log()[-3000:]


def test_cpu_host_partition_during_a_dataset_import(cluster_vhost, cluster_db_url, host_workers, smtp_sink,
                                                    tmp_path):
    from apps.datasets import services
    from apps.datasets.models import Dataset, Status
    from tests.datasets.conftest import write_csv

    rows = 20_000
    source = write_csv(tmp_path / "partition.csv", rows)
    cluster.run("host-up", "cpu2", "24")
    second = cluster.HostWorker("cpu2", "cpu", cluster.broker_url(cluster_vhost), cluster_db_url,
                                env=host_worker_env(smtp_sink, CPU_CONCURRENCY=2))
    cut_off = host_workers["cpu"]
    try:
        second.start().wait_ready(timeout=120)
        # 16 chunks, each held 3 s by its child: the import outlasts the cut-off host's missed heartbeats.
        dataset = services.register_dataset(str(source), name=f"partition-{tmp_path.name}",
                                            options={"chunk_bytes": Path(source).stat().st_size // 16 + 1,
                                                     "pause_per_chunk": 3})

        def cpu1_holds_chunks():
            row = Dataset.objects.get(pk=dataset.pk)
            return row.stage == "profiling" and _held_by(cut_off, row)

        wait_for(cpu1_holds_chunks, timeout=120, interval=0.2, message="cpu1 to work on the import's chunks")
        fault_at = time.time()
        cluster.cut("cpu1")
        time.sleep(3 * HEARTBEAT)  # past RabbitMQ's missed-heartbeat limit: cpu1's unacked chunks are requeued
        cluster.heal("cpu1")
        settled = wait_for(lambda: (d := Dataset.objects.get(pk=dataset.pk)) and not d.is_active and d,
                           timeout=300, interval=0.5, message="the dataset to settle")
        settled_at = time.time()
        wait_for(lambda: "Connected to amqp" in cut_off.log()[-20000:], timeout=120, message="cpu1 reconnecting")
        time.sleep(5)  # cpu1's late acknowledgements and results land now
        final = Dataset.objects.get(pk=dataset.pk)
        cpu2_log = second.log()
        services.remove_workdir(final)
    finally:
        cluster.heal("cpu1")
        second.stop()
        cluster.run("host-down", "cpu2", check=False)

    chunk_runs = sum(1 for line in cpu2_log.splitlines() if "Task datasets.profile_chunk[" in line and "succeeded" in line)
    outcome = Outcome(
        case=f"cpu host cpu1 cut off {3 * HEARTBEAT} s during a dataset import ({final.chunks_total} chunks), healed; "
             "cpu2 takes it over; row = the import's chunks",
        published=final.chunks_total, confirmed=final.chunks_total, raised=0, executed=final.chunks_done,
        guarded_reruns=0, duplicated=max(0, final.chunks_done - final.chunks_total), dead_lettered=0,
        lost=0 if final.status == Status.READY else final.chunks_total - final.chunks_done,
        stall=settled_at - fault_at, longest_publish=0.0)
    write_report_row(outcome)
    print(outcome.row(), f"status {final.status}, rows {final.row_count}, chunks {final.chunks_done}/"
          f"{final.chunks_total}, cpu2 finished {chunk_runs} chunk tasks; {final.error}")

    assert final.status == Status.READY, (final.status, final.error)
    assert settled.status == final.status and settled.profile == final.profile, "the dataset settled twice"
    assert final.row_count == rows and final.profile["rows"] == rows, (final.row_count, final.profile.get("rows"))
    assert final.rows_processed == rows, final.rows_processed
    assert final.chunks_done == final.chunks_total, (final.chunks_done, final.chunks_total)
    assert chunk_runs > 0, "cpu2 never ran a chunk"
    assert cut_off.alive(), cut_off.log()[-3000:]
    assert "Connection to broker lost" in cut_off.log() or "missed heartbeats" in cut_off.log(), cut_off.log()[-3000:]


def _held_by(worker, dataset) -> bool:
    """Whether ``worker``'s log shows it holds one of the dataset's chunk tasks: received, not yet finished."""
    log = worker.log()[-500_000:]
    return any(f"datasets.profile_chunk[{task_id}] received" in log and f"datasets.profile_chunk[{task_id}] succeeded"
               not in log for task_id in dataset.chunk_task_ids or [])
