"""What `make verify` shares between its CPU and GPU checks: running an artifact in the benchmark runner's child
process (here, under qemu, or on a software GPU), reading how it ended, and the one shape of a result row.
"""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_child(cmd: list[str], env: dict | None = None) -> tuple[int, str, float]:
    """Exit code, stderr and seconds of one runner child (never raises on a failed run: that is a row)."""
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    return done.returncode, done.stderr, time.monotonic() - started


def outcome(code: int, stderr: str) -> str | None:
    """None for a clean exit, else how the run ended, in one line."""
    if code == 0:
        return None
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if "Illegal instruction" in stderr or "signal 4" in stderr:
        return "killed by SIGILL (an instruction the emulated core lacks)"
    return f"exit {code}: " + " | ".join(stderr.strip().splitlines()[-2:])


def row(art: dict, n: int, emulated_core: str, seconds: float, device: str = "cpu") -> dict:
    """The head of a verify row; the check adds match, max_difference and detail."""
    head = {"file": art["file"], "runtime": art["runtime"], "precision": art["precision"],
            "emulated_core": emulated_core, "emulated_seconds": round(seconds, 1), "n": n}
    return head | ({"device": device} if device != "cpu" else {})
