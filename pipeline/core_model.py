"""From instructions to cycles: each core's per-class rates (instructions per cycle of the class's typical
instruction, from the vendor's optimization guide) and the two bounds an instruction mix gives on them: lower,
every class overlapped (the busiest pipe group or the issue width sets the time); upper, none overlapped.
The estimate is lower + alpha * (upper - lower) at the core's clock, alpha and its spread measured by the x86
validation (pipeline/estimate_x86.py). docs/estimate.md says what this does and does not model.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError

VECTOR = ("dot", "simd_mac", "simd_other")


@dataclass(frozen=True)
class CoreCosts:
    name: str
    ghz: float                  # the clock the estimate converts cycles at (the core's usual board clock)
    issue: float                # instructions decoded and issued per cycle
    rate: dict                  # class -> instructions per cycle of its typical instruction
    source: str                 # where the figures come from


def _core(name, ghz, issue, dot, mac, other, ls, branch, scalar, source):
    return CoreCosts(name, ghz, issue, {"dot": dot, "simd_mac": mac, "simd_other": other, "load_store": ls,
                                         "branch": branch, "scalar": scalar}, source)


# ARM cores (the boards'): Arm's Software Optimization Guides, "Instruction characteristics" tables, the
# execution throughput of the 128-bit (Q-form) ASIMD instruction of each class.
CORES = {c.name: c for c in (
    # in-order, dual issue, one 64-bit-wide NEON datapath per pipe; no dot products (a zero count, any rate).
    # Arm publishes no SOG for the A53: its TRM (DDI 0500, "dual-issue"), and Q-form FMLA at 1/cycle as the
    # A55's guide gives for the same datapath width. 1.4 GHz: a Raspberry Pi 3B+.
    _core("cortex-a53", 1.4, 2, 1, 1, 1, 1, 1, 2,
          "Cortex-A53 TRM (dual issue, in order); Q-form ASIMD at 1/cycle as in the Cortex-A55 SOG"),
    # Cortex-A55 SOG: dual issue; two 64-bit ASIMD pipes, so a Q-form FMLA, SDOT or ADD takes both: 1/cycle;
    # one load/store pipe; two integer ALUs. 1.8 GHz: the RK3588's little cores.
    _core("cortex-a55", 1.8, 2, 1, 1, 1, 1, 1, 2, "Arm Cortex-A55 Software Optimization Guide, section 3"),
    # Cortex-A72 SOG (ARM UAN 0016A): 3 instructions decoded per cycle; F0/F1 ASIMD pipes: Q-form FP
    # multiply-accumulate at 1/cycle, ASIMD integer basic (ADD) at 2; one load pipe and one store pipe; I0/I1;
    # one branch pipe. 1.8 GHz: a Raspberry Pi 4 (rev 1.4 and later; the first boards ran 1.5).
    _core("cortex-a72", 1.8, 3, 1, 1, 2, 1, 1, 2, "Arm Cortex-A72 Software Optimization Guide (UAN 0016A), "
                                                 "sections 2.1 and 3"),
    # Cortex-A76 SOG: 4 decoded per cycle; V0/V1 128-bit ASIMD pipes: FMLA, SDOT and ADD at 2/cycle; L0/L1
    # two loads per cycle; S0/S1 and M integer pipes; one branch pipe. 2.4 GHz: a Raspberry Pi 5, an RK3588.
    _core("cortex-a76", 2.4, 4, 2, 2, 2, 2, 1, 3, "Arm Cortex-A76 Software Optimization Guide, sections 2 and 3"),
    # Cortex-A78 SOG: as the A76 for these classes (V0/V1, two load pipes, one branch pipe per cycle), with a
    # fourth integer ALU. 2.4 GHz: the Snapdragon 888's middle cores.
    _core("cortex-a78", 2.4, 4, 2, 2, 2, 2, 1, 4, "Arm Cortex-A78 Software Optimization Guide, sections 2 and 3"),
)}

# x86 cores (the validation's, running AVX2 code: 256-bit ymm): Intel's 64 and IA-32 Architectures Optimization
# Reference Manual and AMD's Software Optimization Guides, the same per-class rates.
X86_CORES = {c.name: c for c in (
    # Haswell/Skylake client: 4 wide; FMA on p0/p1 (2); vector ALU p0/p1/p5 (3); two loads and one store; four
    # integer ALUs; branches on p0/p6.
    _core("intel-skylake", 0.0, 4, 2, 2, 3, 2, 2, 4, "Intel Optimization Reference Manual, Skylake chapter"),
    # Sunny Cove (Ice Lake, Rocket Lake): 5 wide; two loads and two stores per cycle.
    _core("intel-sunny-cove", 0.0, 5, 2, 2, 3, 2, 2, 4, "Intel Optimization Reference Manual, Sunny Cove"),
    # Golden Cove (Alder Lake P-cores, Sapphire Rapids): 6 wide; three loads, two stores; five integer ALUs;
    # VPDPBUSD (AVX-VNNI) on p0/p5.
    _core("intel-golden-cove", 0.0, 6, 2, 2, 3, 3, 2, 5, "Intel Optimization Reference Manual, Golden Cove"),
    # Zen 2 to Zen 4: dispatch 6 macro-ops (Zen 2: 5 sustained for these mixes); FP0/FP1 FMA, four FP pipes
    # for vector adds and logic; three loads (two when 256-bit), four ALUs, two branches.
    _core("amd-zen", 0.0, 6, 2, 2, 4, 2, 2, 4, "AMD Software Optimization Guide for family 17h / 19h processors"),
)}


def costs(core: str) -> CoreCosts:
    found = CORES.get(core) or X86_CORES.get(core)
    if found is None:
        raise ConfigError(f"no throughput figures for core {core!r}; known: {', '.join([*CORES, *X86_CORES])}")
    return found


def bounds(by_class: dict[str, float], core: CoreCosts) -> tuple[float, float]:
    """(lower, upper) cycles for these per-class instruction counts on ``core`` (see the module's docstring)."""
    time = {c: n / core.rate[c] for c, n in by_class.items()}
    busiest = max(sum(time[c] for c in VECTOR), time["load_store"], time["scalar"], time["branch"])
    lower = max(sum(by_class.values()) / core.issue, busiest)
    return lower, sum(time.values())


def between(lower: float, upper: float, measured: float) -> float:
    """Where ``measured`` cycles fall between the bounds: 0 at lower, 1 at upper (outside [0, 1] when outside)."""
    return (measured - lower) / (upper - lower) if upper > lower else 0.0


def host_core(cpuinfo: str | None = None) -> str:
    """This x86 machine's core family, for the validation, from /proc/cpuinfo's vendor, family and flags."""
    text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    if platform.machine() != "x86_64" and cpuinfo is None:
        raise ConfigError(f"the estimate's validation runs on an x86-64 machine; this one is {platform.machine()}")
    field = lambda key: next((line.split(":", 1)[1].strip() for line in text.splitlines()
                              if line.split(":", 1)[0].strip() == key), "")
    flags = set(field("flags").split())
    if field("vendor_id") == "AuthenticAMD":
        return "amd-zen"
    if "amx_tile" in flags or "avx_vnni" in flags:
        return "intel-golden-cove"
    if "avx512_vnni" in flags or "avx512ifma" in flags:
        return "intel-sunny-cove"
    return "intel-skylake"


# What the x86 validation measured (`make estimate TARGET=x86-avx2`, pipeline/estimate_x86.py), which the ARM
# estimate borrows: where measured cycles fell between the bounds (alpha: the median, and its range over the
# artifacts that ran the counted code), the leave-one-out error, and the 2-thread efficiency (t1 / t2 / 2).
# None until measured: the estimate is then counts and bounds only.
CALIBRATION: dict | None = None


def estimate(by_class: dict[str, float], core: CoreCosts, threads: int, calibration: dict | None = None) -> dict:
    """Cycles and milliseconds for one inference on ``core`` at its clock, 1 thread and ``threads``: the bounds,
    and (with a calibration) the estimate and its range."""
    cal = CALIBRATION if calibration is None else calibration
    lower, upper = bounds(by_class, core)
    ms = lambda cycles: cycles / (core.ghz * 1e6)
    out = {"core": core.name, "ghz": core.ghz, "lower_cycles": lower, "upper_cycles": upper,
           "bounds_ms": [ms(lower), ms(upper)]}
    if not cal:
        return out
    at = lambda a: ms(lower + a * (upper - lower))
    speedup = 1 + cal["thread_efficiency"] * (threads - 1)
    return out | {"ms_1_thread": at(cal["alpha"]), "range_ms_1_thread": [at(a) for a in cal["alpha_range"]],
                  "threads": threads, "thread_speedup": speedup, "ms": at(cal["alpha"]) / speedup,
                  "range_ms": [at(a) / speedup for a in cal["alpha_range"]]}
