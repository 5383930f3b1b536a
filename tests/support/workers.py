"""Real worker processes for the tests, started from the same compose/start scripts operators use."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
import warnings
from pathlib import Path

from django.conf import settings

from tests.support import tier

ROOT = Path(settings.BASE_DIR)
LOG_DIR = ROOT / "var" / "test-logs"
# The io role's pool in this run: compose/start/io reads IO_POOL, and every worker the tests start inherits
# this process's environment (bin/test's threads pass sets IO_POOL=threads). Tests that check the pool ask here.
IO_POOL = os.environ.get("IO_POOL", "eventlet")


def wait_for(predicate, timeout: float = 30, interval: float = 0.2, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; return it, or fail with ``message``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def database_url(settings_dict: dict) -> str:
    """The URL of the database the tests use (the test database), for worker processes."""
    if settings_dict["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or ""
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{settings_dict.get('HOST') or '127.0.0.1'}:{settings_dict.get('PORT') or 5432}/{settings_dict['NAME']}"


class ProcessRole:
    """One start script (compose/start/<role>) run as a real process in its own process group."""

    def __init__(self, role: str, broker_url: str, db_url: str, name: str | None = None, env: dict | None = None):
        self.role = role
        self.name = name or f"{role}-{uuid.uuid4().hex[:6]}"
        self.nodename = f"{self.name}@{socket.gethostname()}"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{self.name}.log"
        self.env = {
            **os.environ,
            "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
            "DJANGO_SETTINGS_MODULE": "project.settings.test",
            "CELERY_BROKER_URL": broker_url,
            "DATABASE_URL": db_url,
            "WORKER_NAME": self.name,
            "LOG_LEVEL": "INFO",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ProcessRole":
        tier.forbid_in_fast_tier(f"starting compose/start/{self.role}")
        self.open_log()
        self.proc = subprocess.Popen([str(ROOT / "compose" / "start" / self.role)], cwd=ROOT, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def open_log(self) -> None:
        """Append this start's output to the role's log; ``log_of_this_start`` reads from here on."""
        self._log = open(self.log_path, "ab")
        self._start_offset = self._log.tell()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_of_this_start(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(getattr(self, "_start_offset", 0))
            return log.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"{self.nodename} exited with {self.proc.returncode if self.proc else None}:\n"
                                 f"{self.log()[-6000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        try:
            out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        except FileNotFoundError:
            return []
        return [int(pid) for pid in out.split()]

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit; if it does not, fail with what it was doing: the Python stacks of
        it and its children (py-spy) and its log, so a shutdown that hangs in CI says where."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.nodename} (pid {self.pid}) still running {timeout}s after the signal.\n"
                                 f"{self.stacks()}\n--- log tail ---\n{self.log()[-8000:]}") from None

    def stacks(self) -> str:
        """py-spy dumps of the process and its children (py-spy is in requirements/local.txt for this)."""
        py_spy = ROOT / ".venv" / "bin" / "py-spy"
        dumps = []
        for pid in [self.pid, *self.children()]:
            try:
                out = subprocess.run([str(py_spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
                dumps.append(f"--- py-spy dump {pid} ---\n{out.stdout}{out.stderr}")
            except (OSError, subprocess.TimeoutExpired) as error:
                dumps.append(f"--- py-spy dump {pid}: {error!r}")
        return "\n".join(dumps)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the main process only (kill -9 of the worker; its children are orphaned as in real life)."""
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self._log.close()
        self.warn_if_shutdown_overran()

    def warn_if_shutdown_overran(self) -> None:
        """A worker that hit its shutdown deadline (apps/core/shutdown.py) left its stacks in its log: shown in
        the run's warnings summary, so a stuck shutdown that a test survives is still seen, with where."""
        log = self.log()
        at = log.find("Timeout (")
        if at >= 0 and "most recent call first" in log[at:]:
            warnings.warn(f"{self.nodename}: shutdown deadline hit; its stacks:\n{log[at:at + 6000]}", stacklevel=2)


class Worker(ProcessRole):
    """A Celery worker role (cpu or io); ``wait_ready`` pings it through the broker and waits for its
    "ready." line."""

    def wait_ready(self, timeout: float = 60) -> "Worker":
        from project.celery import app

        def answered():
            self.assert_alive()
            return app.control.ping(destination=[self.nodename], timeout=0.5)

        def logged_ready():
            self.assert_alive()
            return " ready." in self.log_of_this_start()

        wait_for(answered, timeout=timeout, interval=0.1, message=f"worker {self.nodename} to answer a ping")
        # An eventlet worker's pidbox runs in a green thread of its own, started before the task consumer:
        # it answers a ping before Celery has consumed the task queues and logged "ready." (a CI run's
        # warnings test read the log in that gap). Celery logs that line at INFO.
        if self.env.get("LOG_LEVEL", "INFO").upper() in ("DEBUG", "INFO"):
            wait_for(logged_ready, timeout=timeout, interval=0.05, message=f"worker {self.nodename} to log ready")
        self.wait_queues_serve()
        return self

    def wait_queues_serve(self) -> None:
        """The worker declared its queues and every dead-letter queue at start; a test must not race their
        Raft members starting (issue 20)."""
        from project import topology
        from tests.support.rabbit import wait_serving

        queues = topology.ROLES.get(self.role, {}).get("queues", [])
        wait_serving(self.env["CELERY_BROKER_URL"], [*queues, *(q.name for q in topology.dead_letter_queues())])
