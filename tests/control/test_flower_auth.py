"""Flower never runs without authentication: its start script refuses, before starting anything."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_flower_refuses_to_start_without_basic_auth():
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    result = subprocess.run([str(ROOT / "compose" / "start" / "flower")], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0
    assert "never runs without authentication" in result.stderr
