"""The weights of a TVM CPU library, kept beside it in <stem>.params rather than inside the .so (whose loader holds
the embedded copy, its deserialized copy and the tensors at once: peak RSS 162 MB against 106 MB for the reference
int8 library). Read by the runner on any machine (numpy only); written by the compile, byte for byte the same for
the same arrays. Format: MAGIC, the header's length (uint64 LE), a JSON header (the library's sha256; per array:
dtype, shape, offset, bytes), then each array's bytes, C order, at offsets that are multiples of ALIGN.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from benchmarks.errors import InputError

MAGIC = b"XEDGEPRM"
ALIGN = 64
SUFFIX = ".params"


def params_file(library: Path) -> Path:
    """Where the weights of ``library`` are (they may not exist: GPU libraries and older builds embed theirs)."""
    return Path(library).with_suffix(SUFFIX)


def write(path: Path, arrays: list[np.ndarray], library_sha256: str) -> None:
    arrays = [np.asarray(array, order="C") for array in arrays]
    entries, offset = [], 0
    for array in arrays:
        entries.append({"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset,
                        "bytes": array.nbytes})
        offset += -(-array.nbytes // ALIGN) * ALIGN
    header = json.dumps({"library_sha256": library_sha256, "arrays": entries}, separators=(",", ":")).encode()
    start = -(-(len(MAGIC) + 8 + len(header)) // ALIGN) * ALIGN
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + struct.pack("<Q", len(header)) + header)
        fh.write(b"\0" * (start - fh.tell()))
        for entry, array in zip(entries, arrays):
            fh.write(b"\0" * (start + entry["offset"] - fh.tell()))
            fh.write(array.tobytes())
    tmp.replace(path)


def read(path: Path, library_sha256: str | None = None) -> list[np.ndarray]:
    """The arrays, each read straight into its own buffer (one copy of the weights in memory); with
    ``library_sha256``, refused unless they were written for that library."""
    with open(path, "rb") as fh:
        head = fh.read(len(MAGIC) + 8)
        if len(head) < len(MAGIC) + 8 or head[:len(MAGIC)] != MAGIC:
            raise InputError(f"{path}: not a TVM weights file written by this project (expected {MAGIC.decode()} "
                             f"at its start); rebuild it with make compile")
        (length,) = struct.unpack("<Q", head[len(MAGIC):])
        try:
            header = json.loads(fh.read(length))
            entries = header["arrays"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: its header is damaged ({exc}); rebuild it with make compile") from None
        if library_sha256 is not None and header.get("library_sha256") != library_sha256:
            raise InputError(f"{path} holds the weights of another build of its library (library sha256 "
                             f"{str(header.get('library_sha256'))[:16]}..., this one {library_sha256[:16]}...); copy "
                             f"the two files of one compile together")
        start = -(-(len(MAGIC) + 8 + length) // ALIGN) * ALIGN
        arrays = []
        for entry in entries:
            array = np.empty(entry["shape"], np.dtype(entry["dtype"]))
            fh.seek(start + entry["offset"])
            if fh.readinto(memoryview(array.reshape(-1).view(np.uint8))) != entry["bytes"]:
                raise InputError(f"{path}: truncated (an array of {entry['bytes']} bytes at {start + entry['offset']} "
                                 f"runs past its end); rebuild it with make compile")
            arrays.append(array)
    return arrays
