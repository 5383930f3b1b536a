"""Run several start scripts in the foreground as one stack; Ctrl-C, SIGTERM or SIGHUP stops them all.

Each process runs in its own process group (its own session), so stopping a role stops its pool children
too (prefork children, uvicorn workers), and a Ctrl-C meant for the terminal's foreground group reaches
only this supervisor, which then stops every group itself. Output is prefixed with the role name. Our own
output may go away at any moment (`bin/run | tee` whose tee died from the same Ctrl-C, a closed terminal):
writing then fails, and the supervisor carries on stopping the stack silently instead of dying with its
children still running; if nobody reads our output any more, the stack is stopped too. If one process
exits, the whole stack is stopped: a half-running stack is worse than a clear stop.

`--check-ports` (stdlib only, runs before .venv exists) says in one line which port is taken and which
variable moves it. `--banner FILE` prints that file, with "ready in N s", once every role is ready.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLORS = ["36", "33", "35", "32", "34", "31", "96"]
STOP_GRACE_SECONDS = 15
READY_WARN_AFTER_SECONDS = 120

# The ports the local stack listens on: (role, host variable, host default, port variable, port default).
PORTS = [
    ("web", "WEB_HOST", "127.0.0.1", "WEB_PORT", 8000),
    ("flower", "FLOWER_ADDRESS", "127.0.0.1", "FLOWER_PORT", 5555),
    ("smtp-sink", None, "127.0.0.1", "SMTP_SINK_PORT", 1025),
]
# How each role says it is ready: a port that accepts connections, or a line in its output.
READY_LINES = {
    "cpu": re.compile(r"@\S+ ready\."),
    "io": re.compile(r"@\S+ ready\."),
    "beat": re.compile(r"beat: Starting"),
    "recorder": re.compile(r"Recorder consuming"),
}


def address(role: str) -> tuple[str, int, str] | None:
    for name, host_var, host_default, port_var, port_default in PORTS:
        if name == role:
            host = os.environ.get(host_var, host_default) if host_var else host_default
            return host, int(os.environ.get(port_var, port_default)), port_var
    return None


def port_taken(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to use
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(roles: list[str]) -> int:
    for role in roles:
        where = address(role)
        if where and port_taken(where[0], where[1]):
            host, port, variable = where
            print(f"bin/run: port {port} on {host} ({role}) is already in use (another stack?): stop what holds it, "
                  f"or set {variable} to a free port", file=sys.stderr)
            return 1
    return 0


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Output:
    """Our stdout, which may vanish: after the first failed write nothing more is written (the child
    pipes are still drained so no child blocks on a full pipe) and ``on_gone`` is called: a stack nobody
    can see any more is stopped, as a writer is by SIGPIPE."""

    def __init__(self, on_gone=lambda: None):
        self.lock = threading.Lock()
        self.gone = False
        self.on_gone = on_gone

    def write(self, text: str) -> None:
        with self.lock:
            if self.gone:
                return
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except (OSError, ValueError):  # EPIPE (reader died), EIO (terminal closed)
                self.gone = True
                self.on_gone()


def pump(name: str, color: str, stream, out: Output, ready: dict, ready_line) -> None:
    prefix = f"\033[{color}m{name:<10}|\033[0m " if sys.stdout.isatty() else f"{name:<10}| "
    for line in iter(stream.readline, b""):
        text = line.decode(errors="replace")
        if ready_line is not None and name not in ready and ready_line.search(text):
            ready[name] = time.monotonic()
        out.write(prefix + text)


def stop_all(processes: dict[str, subprocess.Popen], out: Output) -> None:
    out.write("supervise: stopping " + ", ".join(processes) + "\n")
    for proc in processes.values():
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in processes.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in processes.values():
        try:  # the group: also children whose parent already exited
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    out.write("supervise: all stopped\n")


def main(roles: list[str], banner: str = "", started_at: float | None = None) -> int:
    processes: dict[str, subprocess.Popen] = {}
    stopping = threading.Event()
    out = Output(on_gone=stopping.set)
    ready: dict[str, float] = {}
    started_at = started_at or time.time()

    def stop(*_):
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)

    exit_code = 0
    try:
        for i, role in enumerate(roles):
            script = ROOT / "compose" / "start" / role
            proc = subprocess.Popen([str(script)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            processes[role] = proc
            threading.Thread(target=pump, args=(role, COLORS[i % len(COLORS)], proc.stdout, out, ready,
                                                READY_LINES.get(role)), daemon=True).start()

        announced = warned = False
        while not stopping.is_set():
            for role, proc in processes.items():
                if proc.poll() is not None:
                    out.write(f"supervise: {role} exited with code {proc.returncode}; stopping the stack\n")
                    exit_code = 1
                    stopping.set()
                    break
            if not announced:
                for role in roles:
                    where = address(role)
                    if role not in ready and where and port_open(where[0], where[1]):
                        ready[role] = time.monotonic()
                waiting = [role for role in roles if role not in ready]
                if not waiting:
                    announced = True
                    out.write(f"{banner}\n  ready in {time.time() - started_at:.0f} s\n\n" if banner
                              else f"supervise: ready in {time.time() - started_at:.0f} s\n")
                elif not warned and time.time() - started_at > READY_WARN_AFTER_SECONDS:
                    warned = True
                    out.write(f"supervise: still waiting for {', '.join(waiting)} to be ready\n")
            stopping.wait(0.25)
    finally:  # whatever happened above, no child outlives the supervisor
        stop_all(processes, out)
    return exit_code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-ports", action="store_true", help="only check the roles' ports are free")
    parser.add_argument("--banner", help="a file printed once every role is ready")
    parser.add_argument("roles", nargs="+")
    args = parser.parse_args()
    if args.check_ports:
        sys.exit(check_ports(args.roles))
    banner = Path(args.banner).read_text().rstrip("\n") if args.banner else ""
    # bin/run's start time ($EPOCHREALTIME: its decimal separator follows the locale)
    started = float(os.environ["PLATFORM_RUN_STARTED"].replace(",", ".")) if os.environ.get("PLATFORM_RUN_STARTED") else None
    sys.exit(main(args.roles, banner, started))
