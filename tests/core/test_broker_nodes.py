"""A cluster's node list in CELERY_BROKER_URL: each process starts on a node of its own (settings)."""
import os
import subprocess
import sys

NODES = ["amqp://guest:guest@10.0.0.1:5672//", "amqp://guest:guest@10.0.0.2:5672//", "amqp://guest:guest@10.0.0.3:5672//"]
PROBE = ("import django; django.setup(); from project.celery import app; "
         "print(app.conf.broker_read_url); print(app.conf.broker_write_url)")


def first_nodes(runs: int) -> list[tuple[str, str]]:
    env = {**os.environ, "CELERY_BROKER_URL": ";".join(NODES), "DJANGO_SETTINGS_MODULE": "project.settings.test"}
    out = []
    for _ in range(runs):
        read, write = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                                     check=True).stdout.split()
        assert sorted(read.split(";")) == sorted(NODES) and read == write
        out.append((read.split(";")[0], write.split(";")[0]))
    return out


def test_every_process_gets_the_whole_list_in_its_own_order():
    firsts = {read for read, _ in first_nodes(8)}
    # Celery would otherwise take the environment variable as is: every process on node 1 (seen in the
    # cluster cases' worker logs). 8 runs all starting on one node: probability 3 x (1/3)^8 = 0.05%.
    assert len(firsts) > 1, firsts
