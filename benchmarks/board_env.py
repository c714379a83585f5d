"""On the board: the runtime environment `make provision` installs, and the checks `make bench` makes of it.

Runs under the board's own python3 (standard library only, Python 3.6 syntax, so an old Python is reported,
not a SyntaxError): `probe DIR` says what the board is; `install STAGING ROOT` verifies the pushed wheels'
sha256, installs them into a new virtualenv with no package index, records what is installed and switches
ROOT/current to it; `check ROOT` says whether the installed packages are still the recorded ones.
Every mode prints one JSON object.
"""
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time

RECORD = "xception-edge-env.json"


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def probe(folder):
    """What the board is: its architecture, Python, C library, CPU flags and free disk where ROOT would be."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    where = os.path.expanduser(folder)
    while not os.path.isdir(where):
        where = os.path.dirname(where) or "/"
    stat = os.statvfs(where)
    libc, libc_version = platform.libc_ver()
    return {"machine": platform.machine(), "python": platform.python_version(),
            "implementation": platform.python_implementation(), "libc": libc, "libc_version": libc_version,
            "cpu_flags": sorted(flags), "free_bytes": stat.f_bavail * stat.f_frsize, "checked_in": where}


def installed(env):
    """{distribution name: (version, sha256 of its RECORD)} of a virtualenv's site-packages."""
    found = {}
    for info in glob.glob(os.path.join(env, "lib", "python*", "site-packages", "*.dist-info")):
        name = version = None
        with open(os.path.join(info, "METADATA"), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Name:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
                elif not line.strip():
                    break
        record = os.path.join(info, "RECORD")
        if name:
            found[_canonical(name)] = (version, _sha256(record) if os.path.isfile(record) else None)
    return found


def _canonical(name):
    return name.lower().replace("_", "-").replace(".", "-")


def install(staging, root):
    root = os.path.expanduser(root)
    with open(os.path.join(staging, "wheels.json")) as f:
        wheel_set = json.load(f)
    files = [(w, os.path.join(staging, w["file"])) for w in wheel_set["wheels"]]
    installer = os.path.join(staging, "installer", wheel_set["installer"]["file"])
    for w, path in files + [(wheel_set["installer"], installer)]:
        if _sha256(path) != w["sha256"]:
            return {"ok": False, "error": "{} arrived with another sha256 than the one sent".format(w["file"])}
    env = os.path.join(root, "envs", wheel_set["id"])
    if os.path.isdir(env):                   # an earlier try that did not finish, or a re-provision: start clean
        shutil.rmtree(env)
    os.makedirs(os.path.dirname(env), exist_ok=True)
    python = os.path.join(env, "bin", "python")
    for step, argv in (("python3 -m venv", [sys.executable, "-m", "venv", "--without-pip", env]),
                       ("pip install --no-index", [python, os.path.join(installer, "pip"), "install", "--quiet",
                        "--no-compile", "--disable-pip-version-check", "--no-index", "--no-deps"]
                        + [path for _, path in files])):
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            shutil.rmtree(env, ignore_errors=True)
            lines = done.stdout.decode(errors="replace").strip().splitlines()
            return {"ok": False, "error": "{} failed on the board: {}".format(step, lines[-1] if lines else "")}
    have = installed(env)
    record = {"set_id": wheel_set["id"], "arch": wheel_set["arch"], "python": platform.python_version(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "packages": []}
    for w, _ in files:
        name, version = w["file"].split("-")[:2]
        got = have.get(_canonical(name))
        if got is None or got[0] != version:
            shutil.rmtree(env, ignore_errors=True)
            return {"ok": False, "error": "{} did not install as {} {} (found {})".format(w["file"], name, version, got)}
        record["packages"].append({"name": _canonical(name), "version": version, "wheel": w["file"],
                                   "wheel_sha256": w["sha256"], "record_sha256": got[1]})
    _write_atomic(os.path.join(env, RECORD), json.dumps(record, indent=1) + "\n")
    link = os.path.join(root, "current")
    tmp = "{}.{}".format(link, os.getpid())
    os.symlink(os.path.join("envs", wheel_set["id"]), tmp)
    os.replace(tmp, link)                    # the switch is one rename: a bench sees the old or the new
    for other in glob.glob(os.path.join(root, "envs", "*")):
        if os.path.basename(other) != wheel_set["id"]:
            shutil.rmtree(other, ignore_errors=True)
    return dict(record, ok=True, env=env)


def check(root):
    """Whether ROOT/current is a finished environment whose packages are still the ones recorded."""
    env = os.path.join(os.path.expanduser(root), "current")
    record_file = os.path.join(env, RECORD)
    if not os.path.isfile(record_file):
        return {"provisioned": False}
    with open(record_file) as f:
        record = json.load(f)
    have = installed(env)
    problems = []
    for p in record["packages"]:
        got = have.get(p["name"])
        if got is None:
            problems.append("{} {} is gone".format(p["name"], p["version"]))
        elif got[0] != p["version"]:
            problems.append("{} is {} where {} was installed".format(p["name"], got[0], p["version"]))
        elif got[1] != p["record_sha256"]:
            problems.append("{} {} was reinstalled from another wheel (its RECORD changed)".format(p["name"], got[0]))
    return {"provisioned": True, "set_id": record["set_id"], "python": os.path.join(os.path.realpath(env), "bin",
            "python"), "problems": problems, "packages": len(record["packages"])}


def _write_atomic(path, text):
    tmp = "{}.{}".format(path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv):
    mode = argv[0] if argv else ""
    if mode == "probe" and len(argv) == 2:
        out = probe(argv[1])
    elif mode == "install" and len(argv) == 3:
        out = install(argv[1], argv[2])
    elif mode == "check" and len(argv) == 2:
        out = check(argv[1])
    else:
        print("usage: board_env.py probe ROOT | install STAGING ROOT | check ROOT", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0 if out.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
