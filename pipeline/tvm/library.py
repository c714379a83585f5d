"""Reading a compiled TVM library without loading it (it may be for another architecture): its ELF header and
dynamic section, and the modules TVM serialised into it (the Relax VM executable with its bytecode and
weights, the OpenCL module with its kernels and source). TVM-free.

TVM 0.27 stores them in the symbol ``__tvm_ffi__library_bin``: a u64 size, the import tree (two u64 arrays,
each a u64 count and its values), then per module its kind and, except for the library's own code
(``_lib``), its bytes; strings and byte runs are a u64 length and the bytes, all little-endian.
"""
from __future__ import annotations

import struct
from pathlib import Path

from pipeline.errors import InputError

MACHINES = {183: "aarch64", 62: "x86_64"}
LIBRARY_SYMBOL = "__tvm_ffi__library_bin"
_SHT_SYMTAB, _SHT_DYNSYM, _SHT_DYNAMIC = 2, 11, 6
_DT_NEEDED, _DT_SONAME = 1, 14


def _sections(data: bytes, where: str) -> list[dict]:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise InputError(f"{where} is not a 64-bit little-endian ELF shared library")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = []
    for i in range(shnum):
        name, kind, _, addr, offset, size, link, _, _, _ = struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
        sections.append({"name": name, "type": kind, "addr": addr, "offset": offset, "size": size, "link": link})
    names = sections[shstrndx]
    for s in sections:
        s["name"] = _cstring(data, names["offset"] + s["name"])
    return sections


def _cstring(data: bytes, offset: int) -> str:
    return data[offset:data.index(b"\0", offset)].decode()


def elf_info(path: Path) -> dict:
    """{"arch": aarch64 | x86_64 | e_machine number, "needed": [sonames], "soname": str | None}."""
    data = Path(path).read_bytes()
    sections = _sections(data, str(path))
    machine, = struct.unpack_from("<H", data, 18)
    needed, soname = [], None
    for s in sections:
        if s["type"] != _SHT_DYNAMIC:
            continue
        strings = sections[s["link"]]
        for i in range(s["size"] // 16):
            tag, value = struct.unpack_from("<qQ", data, s["offset"] + 16 * i)
            if tag == _DT_NEEDED:
                needed.append(_cstring(data, strings["offset"] + value))
            elif tag == _DT_SONAME:
                soname = _cstring(data, strings["offset"] + value)
    return {"arch": MACHINES.get(machine, str(machine)), "needed": needed, "soname": soname}


def symbol_bytes(path: Path, symbol: str) -> bytes:
    data = Path(path).read_bytes()
    sections = _sections(data, str(path))
    for s in sections:
        if s["type"] not in (_SHT_SYMTAB, _SHT_DYNSYM):
            continue
        strings = sections[s["link"]]
        for i in range(s["size"] // 24):
            name, _, _, shndx, value, size = struct.unpack_from("<IBBHQQ", data, s["offset"] + 24 * i)
            if 0 < shndx < len(sections) and _cstring(data, strings["offset"] + name) == symbol:
                home = sections[shndx]
                start = home["offset"] + value - home["addr"]
                return data[start:start + size]
    raise InputError(f"{path} has no symbol {symbol}: not a library made by tvm.compile / export_library")


def library_modules(path: Path) -> list[tuple[str, bytes]]:
    """The modules serialised into a TVM library, in order: [(kind, bytes)], e.g. relax.VMExecutable,
    _lib (the library's own code: no bytes), opencl."""
    blob = symbol_bytes(path, LIBRARY_SYMBOL)
    pos = 8

    def u64() -> int:
        nonlocal pos
        value, = struct.unpack_from("<Q", blob, pos)
        pos += 8
        return value

    def chunk() -> bytes:
        nonlocal pos
        n = u64()
        if n > len(blob) - pos:
            raise InputError(f"{path}: the module table of {LIBRARY_SYMBOL} is truncated")
        pos += n
        return blob[pos - n:pos]

    for _ in range(2):                       # the import tree: row pointers, child indices
        count = u64()
        pos += 8 * count
    modules = []
    while pos < len(blob):
        kind = chunk().decode()
        modules.append((kind, b"" if kind == "_lib" else chunk()))
    return modules


# AArch64 instruction words of the ARMv8.2 dot-product extension (FEAT_DotProd, Linux cpuinfo "asimddp"):
# SDOT/UDOT (vector) and SDOT/UDOT (by element); Q, U and the registers masked out.
DOTPROD_WORDS = ((0x9FE0FC00, 0x0E809400), (0x9FC0F400, 0x0F80E000))


def aarch64_dot_instructions(path: Path) -> int:
    """How many SDOT/UDOT instructions the executable code of an aarch64 library holds (a disassembly of
    its .text, by instruction encoding: no objdump needed)."""
    data = Path(path).read_bytes()
    sections = _sections(data, str(path))
    count = 0
    for s in sections:
        if s["name"] != ".text":
            continue
        words = struct.unpack_from(f"<{s['size'] // 4}I", data, s["offset"])
        count += sum(1 for w in words if any(w & mask == value for mask, value in DOTPROD_WORDS))
    return count
