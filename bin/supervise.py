"""Run several start scripts in the foreground as one stack; Ctrl-C stops them all.

Each process runs in its own process group, so stopping a role stops its pool children too (prefork
children, uvicorn workers). Output is prefixed with the role name. If one process exits, the whole stack
is stopped: a half-running stack is worse than a clear stop.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLORS = ["36", "33", "35", "32", "34", "31", "96"]
STOP_GRACE_SECONDS = 15


def pump(name: str, color: str, stream) -> None:
    prefix = f"\033[{color}m{name:<10}|\033[0m " if sys.stdout.isatty() else f"{name:<10}| "
    for line in iter(stream.readline, b""):
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


def main(roles: list[str]) -> int:
    processes: dict[str, subprocess.Popen] = {}
    stopping = threading.Event()

    def stop(*_):
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    for i, role in enumerate(roles):
        script = ROOT / "compose" / "start" / role
        proc = subprocess.Popen([str(script)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        processes[role] = proc
        threading.Thread(target=pump, args=(role, COLORS[i % len(COLORS)], proc.stdout), daemon=True).start()

    exit_code = 0
    while not stopping.is_set():
        for role, proc in processes.items():
            if proc.poll() is not None:
                print(f"supervise: {role} exited with code {proc.returncode}; stopping the stack", flush=True)
                exit_code = 1
                stopping.set()
                break
        stopping.wait(0.5)

    print("supervise: stopping " + ", ".join(processes), flush=True)
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
    print("supervise: all stopped", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
