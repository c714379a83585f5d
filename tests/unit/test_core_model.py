"""The estimate's arithmetic (pipeline/core_model.py): the two cycle bounds of an instruction mix, the calibrated
estimate between them, and which x86 core family a /proc/cpuinfo names."""
from __future__ import annotations

import pytest

from pipeline.core_model import CORES, X86_CORES, between, bounds, costs, estimate, host_core
from pipeline.errors import ConfigError

MIX = {"dot": 0, "simd_mac": 600, "simd_other": 200, "load_store": 300, "branch": 50, "scalar": 250}


def test_bounds_of_a_known_mix_on_the_a72():
    a72 = costs("cortex-a72")         # 3 issued per cycle; FMLA 1, other SIMD 2, load/store 1, branch 1, scalar 2
    lower, upper = bounds(MIX, a72)
    # the vector pipes are the busiest: 600 / 1 + 200 / 2 = 700 cycles, more than 1400 / 3 issued
    assert lower == 700
    assert upper == 600 + 100 + 300 + 50 + 125


def test_issue_width_bounds_a_mix_spread_over_every_pipe():
    spread = {"dot": 0, "simd_mac": 100, "simd_other": 0, "load_store": 100, "branch": 100, "scalar": 200}
    lower, _ = bounds(spread, costs("cortex-a72"))
    assert lower == 500 / 3


def test_the_estimate_sits_at_alpha_between_the_bounds_and_scales_with_threads():
    a76 = costs("cortex-a76")
    lower, upper = bounds(MIX, a76)
    cal = {"alpha": 0.5, "alpha_range": [0.25, 0.75], "thread_efficiency": 0.8, "error": [-0.1, 0.1],
           "measured": "test"}
    e = estimate(MIX, a76, 4, cal)
    ms = (lower + 0.5 * (upper - lower)) / (a76.ghz * 1e6)
    assert e["ms_1_thread"] == pytest.approx(ms)
    assert e["range_ms_1_thread"][0] < e["ms_1_thread"] < e["range_ms_1_thread"][1]
    assert e["ms"] == pytest.approx(ms / (1 + 0.8 * 3))
    assert between(lower, upper, lower + 0.5 * (upper - lower)) == pytest.approx(0.5)
    assert e == estimate(dict(MIX), a76, 4, cal)          # nothing but the counts and the figures moves it


def test_every_board_core_has_figures_and_a_clock():
    from pipeline.emulation import CORES as EMULATED

    assert set(EMULATED) <= set(CORES)
    for core in [*CORES.values(), *X86_CORES.values()]:
        assert core.issue > 0 and all(v > 0 for v in core.rate.values()) and core.source
    assert all(c.ghz > 0 for c in CORES.values())


def test_an_unknown_core_is_one_line():
    with pytest.raises(ConfigError, match=r"^no throughput figures for core 'cortex-x9'; known: cortex-a53, "):
        costs("cortex-x9")


@pytest.mark.parametrize("vendor,flags,family", [
    ("AuthenticAMD", "avx2 fma", "amd-zen"),
    ("GenuineIntel", "avx2 fma avx512f avx512_vnni amx_tile amx_int8", "intel-golden-cove"),
    ("GenuineIntel", "avx2 fma avx512f avx512_vnni avx512ifma", "intel-sunny-cove"),
    ("GenuineIntel", "avx2 fma", "intel-skylake"),
])
def test_host_core_from_cpuinfo(vendor, flags, family):
    assert host_core(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: sse sse2 {flags}\n") == family
