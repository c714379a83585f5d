"""tests/support/x86_emulation.py without Bochs: the runner's table of calls, its output's parsing, bad inputs."""
from __future__ import annotations

import numpy as np
import pytest

from tests.support import x86_emulation as emu
from pipeline.errors import InputError, StageError


def test_operands_are_raw_bytes_beside_a_call_table(tmp_path):
    x = np.arange(-3, 3, dtype=np.int8).reshape(1, 2, 3)
    scale = np.array([0.5, -1.25], np.float32)
    expected = np.array([[7, -8]], np.int8)
    emu.operands([emu.Call("f_1", (x, scale), expected, "avx512-vnni")], tmp_path)
    assert (tmp_path / "c0_a0.bin").read_bytes() == bytes([253, 254, 255, 0, 1, 2])
    assert (tmp_path / "c0_a1.bin").read_bytes() == scale.tobytes()
    assert (tmp_path / "c0_expected.bin").read_bytes() == bytes([7, 248])
    assert not (tmp_path / "c0_a2.bin").exists()               # the output is a zeroed buffer, not data
    header, data = (tmp_path / "calls.h").read_text(), (tmp_path / "data.S").read_text()
    assert "static uint8_t c0_a2[2] __attribute__((aligned(64)));" in header
    assert "static const int64_t c0_s0[3] = {1,2,3};" in header
    assert '{"f_1", __tvm_ffi_f_1, 2u, 3, {{c0_a0, 3, 0, 8, c0_s0}, {c0_a1, 1, 2, 32, c0_s1}, ' \
           '{c0_a2, 2, 0, 8, c0_s2}}, c0_expected},' in header
    assert 'c0_a0:\n.incbin "c0_a0.bin"' in data and 'c0_expected:\n.incbin "c0_expected.bin"' in data


@pytest.mark.parametrize("call, says", [
    (emu.Call("bad name", (), np.zeros(1, np.int8)), "not a C symbol"),
    (emu.Call("f", (), np.zeros(1, np.int8), "sse9"), "unknown instruction set 'sse9'"),
    (emu.Call("f", (np.zeros(1, np.float64),), np.zeros(1, np.int8)), "argument 0 is float64"),
    (emu.Call("f", tuple(np.zeros(1, np.int8) for _ in range(8)), np.zeros(1, np.int8)), "at most 8"),
    (emu.Call("big", (np.zeros(200 << 20, np.int8),), np.zeros(30 << 20, np.int8)), "pass 256 MiB at big"),
])
def test_bad_calls_are_one_line_naming_what_is_accepted(call, says, tmp_path):
    with pytest.raises(InputError, match="accepted|at most|smaller batches") as error:
        emu.operands([call], tmp_path)
    assert says in str(error.value) and "\n" not in str(error.value)


def test_no_calls_is_an_input_error():
    with pytest.raises(InputError, match="no calls"):
        emu.run([], [])


def test_parse_reads_each_outcome_and_requires_the_result_line():
    text = ("garbage before\nCPU Some CPU | avx2 1 avx512-vnni 1 avx-vnni 0\nSAME f 0/10 rc 0\n"
            "DIFFERS g 3/10 rc 0\nDIFFERS h 0/4 rc -1\nSKIP k\nRESULT ran 3 differ 2 skipped 1\n")
    cpu, outcomes = emu.parse(text)
    assert cpu == "Some CPU | avx2 1 avx512-vnni 1 avx-vnni 0"
    assert outcomes == {"f": emu.Outcome("same", 0, 10, 0), "g": emu.Outcome("differs", 3, 10, 0),
                        "h": emu.Outcome("differs", 0, 4, -1), "k": emu.Outcome("skipped")}
    with pytest.raises(StageError, match="stopped before the runner's RESULT line, outside the calls"):
        emu.parse(text.replace("RESULT", "RES"))
    with pytest.raises(StageError, match="RESULT line, in k2 \\(an instruction this CPU lacks"):
        emu.parse(text.replace("RESULT ran 3 differ 2 skipped 1\n", "CALL k2\n"))


def test_the_debian_index_gives_each_wanted_package_its_file_and_digest():
    index = ("Package: bochs\nVersion: 3.0+dfsg-1\nDepends: libc6 (>= 2.38),\n libfoo\n"
             "Filename: pool/main/b/bochs/bochs_3.0+dfsg-1_amd64.deb\nSHA256: aa11\n\n"
             "Package: libc6\nFilename: pool/main/g/glibc/libc6_2.41_amd64.deb\nSHA256: bb22\n\n"
             "Package: other\nFilename: pool/o.deb\nSHA256: cc33\n\n"
             "Package: libltdl7\nFilename: pool/l.deb\n")                  # no digest: not taken
    assert emu.package_index(index, ("bochs", "libc6", "libltdl7")) == {
        "bochs": ("pool/main/b/bochs/bochs_3.0+dfsg-1_amd64.deb", "aa11"),
        "libc6": ("pool/main/g/glibc/libc6_2.41_amd64.deb", "bb22")}
