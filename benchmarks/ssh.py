"""Run the benchmark on a board over ssh: push build/<target> and benchmarks/, run, fetch the JSON.

Every user string reaches ssh as its own argument; the one command line the remote shell sees is
built with shlex quoting, so a path or host name is never interpreted as shell syntax.
"""
from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import tarfile
from pathlib import Path

from benchmarks.errors import BenchError

PACKAGE = Path(__file__).resolve().parent
DEST = re.compile(r"^(?:[A-Za-z0-9._][A-Za-z0-9._-]*@)?[A-Za-z0-9._:\[\]-]+$")


def check_destination(dest: str) -> str:
    if not DEST.match(dest) or dest.startswith("-"):
        raise BenchError(f"DEVICE={dest!r} is not an ssh destination; accepted: host or user@host "
                         f"(letters, digits, . _ - : [ ])")
    return dest


class Remote:
    def __init__(self, dest: str, port: int | None = None, options: list[str] | None = None, timeout: float = 3600):
        self.base = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *(options or [])]
        if port:
            self.base += ["-p", str(port)]
        self.base += ["--", check_destination(dest)]
        self.dest, self.timeout = dest, timeout

    def run(self, argv: list[str], stdin: bytes | None = None) -> str:
        command = shlex.join(argv)
        done = subprocess.run([*self.base, command], input=stdin, capture_output=True, timeout=self.timeout)
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise BenchError(f"ssh {self.dest}: `{command}` failed (exit {done.returncode}): "
                             f"{err[-1] if err else 'no message'}")
        return done.stdout.decode(errors="replace")


def bundle(build_dir: Path) -> bytes:
    """A tar of build/<target>/ (results of earlier runs left out) and the runner package."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(build_dir.rglob("*")):
            rel = path.relative_to(build_dir)
            if path.is_file() and rel.parts[0] not in ("bench", "report"):
                tar.add(path, arcname=f"{build_dir.name}/{rel}")
        for path in sorted(PACKAGE.iterdir()):
            if path.suffix in (".py", ".json"):
                tar.add(path, arcname=f"benchmarks/{path.name}")
    return buffer.getvalue()


BOARD_SCRIPT = PACKAGE / "board_env.py"


def board_script(remote: Remote, *argv: str, pushed: str = "") -> dict:
    """Run benchmarks/board_env.py on the board under its python3 (sent on stdin, so a probe writes nothing; or
    the copy ``pushed`` there) and return the JSON object it prints."""
    out = remote.run(["python3", pushed or "-", *argv], stdin=None if pushed else BOARD_SCRIPT.read_bytes())
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"{remote.dest}: the board's python3 printed no answer to `board_env.py {argv[0]}`: "
                         f"{out.strip()[-200:]!r}") from None


NOT_PROVISIONED = ("not run in the environment `make provision` installs (the runtimes `make verify` proved); "
                   "run `make provision TARGET={target} DEVICE={dest}` first")


def board_environment(remote: Remote, expected_set: str | None, target: str) -> dict:
    """The provisioned environment on the board, checked: {python, verified, why, ...}. One that changed since
    `make provision` is refused: its figures would not be the verified runtimes'."""
    state = board_script(remote, "check", "~/.xception-edge")
    if not state["provisioned"]:
        return {"provisioned": False, "verified": False, "why": NOT_PROVISIONED.format(target=target, dest=remote.dest)}
    if state["problems"]:
        raise BenchError(f"{remote.dest}: the runtime environment `make provision` installed has changed: "
                         f"{'; '.join(state['problems'])}; run `make provision TARGET={target} DEVICE={remote.dest}` "
                         f"again (or REMOTE_PYTHON= to run elsewhere, unverified)")
    if expected_set is not None and state["set_id"] != expected_set:
        why = (f"provisioned from wheel set {state['set_id']}, not {expected_set}, the set this machine's make verify "
               f"installs; run `make provision TARGET={target} DEVICE={remote.dest}` again")
        return state | {"verified": False, "why": why}
    return state | {"verified": True, "why": "" if expected_set else "wheel set not compared (none cached here)"}


def run_over_ssh(build_dir: Path, dest: str, runner_args: list[str], port: int | None = None,
                 options: list[str] | None = None, remote_python: str = "", log=print,
                 expected_set: str | None = None) -> dict:
    """``remote_python`` "": the provisioned environment when there is one, else python3 (results then say
    verified_runtime: false, with the reason)."""
    if not (build_dir / "manifest.json").is_file():
        raise BenchError(f"{build_dir} has no manifest.json; run `make compile` first")
    remote = Remote(dest, port, options)
    if remote_python:
        env = {"provisioned": None, "verified": False, "python": remote_python,
               "why": f"run by REMOTE_PYTHON={remote_python}, not the environment `make provision` installs"}
    else:
        env = board_environment(remote, expected_set, build_dir.name)
        env.setdefault("python", "python3")
    log(f"{dest}: runtimes from {env['python']}" + (f" (wheel set {env['set_id']}, verified)" if env["verified"]
                                                    else f"; {env['why']}"))
    folder = remote.run(["mktemp", "-d", "/tmp/xception-edge.XXXXXX"]).strip()
    try:
        log(f"pushing {build_dir} and the runner to {dest}:{folder}")
        remote.run(["tar", "-C", folder, "-xf", "-"], stdin=bundle(build_dir))
        log(f"running the benchmark on {dest}")
        out = f"{folder}/result.json"
        remote.run(["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", folder, env["python"], "-m", "benchmarks.run",
                    f"{folder}/{build_dir.name}", "--out", out, *runner_args])
        results = json.loads(remote.run(["cat", out]))
    finally:
        remote.run(["rm", "-rf", folder])
    if not env["verified"]:
        for r in results["results"]:
            r["verified_runtime"] = False
            r["runtime_note"] = "; ".join(x for x in (env["why"], r.get("runtime_note")) if x)
    runtime_env = {k: env[k] for k in ("provisioned", "verified", "python", "set_id", "why") if k in env}
    return results | {"where": "ssh", "remote": dest, "runtime_env": runtime_env}
