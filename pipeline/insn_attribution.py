"""Which functions the counted instructions belong to: each translated block the plugin saw (address, executions,
instructions) is placed in the library the guest had mapped there (/proc/self/maps, as the runner's child read it
under qemu) and in that library's nearest preceding function symbol. Code outside any mapped file (qemu's own
stubs, JIT-generated kernels) is "(anonymous)". Every counted instruction lands somewhere, so the attribution of a
run sums to its total.
"""
from __future__ import annotations

import struct
import subprocess
from bisect import bisect_right
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

ANONYMOUS = "(anonymous)"


def read_blocks(text: str) -> list[tuple[int, int, int]]:
    """(address, executions, instructions) of each block the plugin wrote."""
    return [(int(p[1], 16), int(p[2]), int(p[3])) for p in (line.split() for line in text.splitlines())
            if p and p[0] == "tb"]


def read_maps(text: str) -> list[tuple[int, int, int, str]]:
    """(start, end, file offset, path) of the executable file mappings."""
    out = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and "x" in parts[1] and parts[5].startswith("/"):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append((start, end, int(parts[2], 16), parts[5]))
    return sorted(out)


@lru_cache(maxsize=None)
def _segments(path: Path) -> tuple[tuple[int, int, int], ...]:
    """(file offset, virtual address, size) of the ELF file's loadable segments."""
    data = path.read_bytes()[:1 << 16]
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return ()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segs = []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:                                   # PT_LOAD
            segs.append((p_offset, p_vaddr, p_filesz))
    return tuple(segs)


@lru_cache(maxsize=None)
def _symbols(path: Path) -> tuple[list[int], list[str]]:
    """The file's function symbols, by address (nm reads any ELF; static and dynamic tables both)."""
    found = {}
    for flag in ([], ["-D"]):
        done = subprocess.run(["nm", "--defined-only", *flag, str(path)], capture_output=True, text=True)
        for line in done.stdout.splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) == 3 and parts[1] in "tTwW" and not parts[2].startswith("$"):
                found.setdefault(int(parts[0], 16), parts[2])
    addresses = sorted(found)
    return addresses, [found[a] for a in addresses]


def _where(path: Path, file_offset: int) -> str:
    for offset, vaddr, size in _segments(path):
        if offset <= file_offset < offset + size:
            address = file_offset - offset + vaddr
            addresses, names = _symbols(path)
            i = bisect_right(addresses, address) - 1
            return names[i] if i >= 0 else "(no symbol)"
    return "(no symbol)"


def attribute(blocks: list[tuple[int, int, int]], maps: list[tuple[int, int, int, str]],
              host_path) -> dict[str, int]:
    """{"library: function": instructions} of one run; ``host_path`` maps a guest path to the file on this
    machine (the sysroot holds the guest's libraries)."""
    starts = [m[0] for m in maps]
    out: dict[str, int] = defaultdict(int)
    for address, executions, insns in blocks:
        i = bisect_right(starts, address) - 1
        if i < 0 or address >= maps[i][1]:
            out[ANONYMOUS] += executions * insns
            continue
        start, _end, offset, guest = maps[i]
        path = host_path(guest)
        name = _where(path, address - start + offset) if path.is_file() else "(no symbol)"
        out[f"{Path(guest).name}: {name}"] += executions * insns
    return dict(out)


def per_inference(first: dict[str, int], second: dict[str, int], runs: int) -> dict[str, float]:
    """(second run - first run) / runs for every function either run executed, the largest first."""
    keys = set(first) | set(second)
    diff = {k: (second.get(k, 0) - first.get(k, 0)) / runs for k in keys}
    return dict(sorted(((k, v) for k, v in diff.items() if v), key=lambda kv: -abs(kv[1])))
