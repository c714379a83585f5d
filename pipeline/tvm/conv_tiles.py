"""The register tiles of the default CPU schedules (pipeline/tvm/schedules.py): ConvLike schedules a convolution-like
function (an injective prologue, one spatial x reduction block, an injective epilogue) as register tiles of output
pixels x one vector of output channels, with width parts, channel parts and weight chunks where the shapes ask for
them. Reduction order is never changed: a scheduled function gives the unscheduled one's result, bit for bit
(tests/integration/test_tvm_schedules.py). This module imports TVM. Details: docs/internals.md (module notes).
"""
from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import get_extent
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target.codegen import llvm_get_vector_width, target_has_features

ROWS = 6          # measured on a Zen 4 at AVX2 and AVX-512: 6 rows run 1x1 convolutions at 110-115 GFLOP/s
CHUNK_BYTES = 256 * 1024   # weights per chunk; 64 KB to 1 MB measured within 5% of each other (Xeon, 2026-12-05)
ALIASING_BYTES = 2048      # weight rows of a multiple of this are packed per chunk (_packed)


def vector_lanes(target, bits: int = 32) -> int:
    """TVM's vector width in elements: 16 floats on every x86 with AVX (LLVM's 512 bits; two registers each
    on AVX2, which measured faster than one), 4 on NEON."""
    width = llvm_get_vector_width(target)
    return max((width if width > 0 else 128) // bits, 2)


def register_bits(target) -> int:
    """The width of one vector register: the CPU's features decide on x86 (LLVM says 512 for a Haswell)."""
    width = llvm_get_vector_width(target)
    if width > 256 and not is_arm(target) and not target_has_features("avx512f", target):
        width = 256 if target_has_features("avx", target) else 128
    return width if width > 0 else 128


def normalized(func):
    """A schedule of ``func`` and its normalized blocks, or (None, None) for what no rule takes."""
    if not isinstance(func, tirx.PrimFunc):
        return None, None
    sch = s_tir.Schedule(func)
    return sch, normalize_prim_func(sch)


def register_tile(channels: int, pixels, pointwise: bool, target, width=None) -> tuple[int, int]:
    """(lanes, rows) of a convolution's register tile: ``rows`` output pixels x one vector of ``lanes`` output
    channels, each weight vector loaded once per reduction step and used by every row. The vector is the widest
    that divides the channels (728 = 91 x 8: no predicated tail). Rows: up to 6 that divide the pixels where 4
    or more do, else the largest divisor the registers hold (a 9x9 map: 9, not 1). With the image ``width``
    (a 1x1 kernel's pixels as one loop), only a divisor of the width or a multiple of it: a tile across two
    image rows gives its epilogue whole rows, half of them not yet computed (74x74 took 4 rows: wrong results,
    raced between threads). Else, for a 1x1 kernel, as many as the registers hold: ConvLike then cuts the width
    into parts of at most that (a predicated tail would test every pixel, 3-5x slower, and 19 rows of a 19x19
    map spill on AVX2); a larger kernel's predicated tail costs little."""
    widest = vector_lanes(target)
    lanes = next((w for w in (widest, widest // 2, widest // 4) if w >= 2 and channels % w == 0), 0)
    if not lanes:                               # odd or narrow channels: a shorter vector, a predicated tail
        return min(widest, 1 << (channels.bit_length() - 1)), 1
    if not isinstance(pixels, int):
        return lanes, 1
    fit = registers_fit(lanes, target)
    divisors = [r for r in range(1, min(pixels, fit) + 1) if pixels % r == 0 and aligned(r, width)]
    rows = max(r for r in divisors if r <= min(ROWS, fit))
    if rows < 4:
        rows = max(divisors)
    # a small map whose whole image rows fit (3x3 on AVX2: 3 rows of 2 vectors) keeps its aligned tile; cutting
    # it into width parts left the exit flow's 1x1 convolutions unscheduled there (17.9 ms instead of ~1)
    if rows < 4 and not (pointwise and isinstance(width, int) and rows >= width):
        rows = min(pixels, fit if pointwise else ROWS)
    return lanes, rows


def aligned(rows: int, width) -> bool:
    """Whether tiles of ``rows`` pixels, counted along image rows of ``width``, never cross an image row's end."""
    return not isinstance(width, int) or width % rows == 0 or rows % width == 0


def registers_fit(lanes: int, target) -> int:
    """How many rows of ``lanes``-wide accumulators the vector registers hold, less a weight vector and an input."""
    bits = register_bits(target)
    registers = 32 if bits >= 512 or is_arm(target) else 16       # AVX-512 and NEON: 32; AVX2, SSE: 16
    return (registers - 3) // max(1, lanes * 32 // bits)


def width_parts(width: int, rows: int) -> list[int]:
    """A width cut into the fewest nearly equal parts of at most ``rows`` pixels (19 by 13: 10 and 9)."""
    count = -(-width // rows)
    return [width // count + (1 if i < width % count else 0) for i in range(count)]


def is_arm(target) -> bool:
    return str(target.attrs.get("mtriple", "")).startswith("aarch64")


class ConvLike(CPUScheduleRule):
    def apply(self, func, target, _):
        sch, infos = normalized(func)
        if not infos:
            return None
        reductions = [i for i, b in enumerate(infos) if not b.is_injective()]
        if len(reductions) != 1:
            return None
        m = reductions[0]
        kinds = infos[m].dom_kind()
        spatial = len(kinds) - len(kinds.lstrip("S"))
        if spatial < 1 or spatial == len(kinds) or kinds[spatial:].strip("R"):
            return None
        kept = []
        for i, block in enumerate(infos):
            if i in (m, len(infos) - 1):
                continue
            try:
                sch.compute_inline(block.block_rv)
            except Exception:  # noqa: BLE001 - not inlinable: must follow the tile below
                kept.append(i)
        if any(i < m for i in kept):
            return None
        epilogue = [infos[i].block_rv for i in kept] + ([infos[-1].block_rv] if m != len(infos) - 1 else [])
        channels = get_extent(sch, sch.get_loops(infos[m].block_rv)[spatial - 1])
        if not isinstance(channels, int) or channels < 2:
            return None
        if spatial == 1:
            return _vector_matrix(sch, infos[m].block_rv, channels, target, epilogue)
        reduction = _product([get_extent(sch, r) for r in sch.get_loops(infos[m].block_rv)[spatial:]])
        tail = channel_tail(channels, target, reduction)
        if tail:
            try:
                return _in_channel_parts(sch.copy(), infos[m].block_rv, spatial, channels - tail, epilogue, target)
            except Exception:  # noqa: BLE001 - a nest loop_partition cannot take: one vector width throughout
                pass
        return _tile(sch, infos[m].block_rv, spatial, target, epilogue)


def _vector_matrix(sch, block, channels: int, target, epilogue):
    """One row times a [K, N] matrix (the classifier at batch 1): a register tile of several channel blocks, each
    weight row read in order, one accumulator per block (dlight's GEMV rule took 4.6 ms for 2048x1000 at 299x299,
    an 8 MB read). None where no vector width divides the channels: that rule keeps them."""
    lanes, _ = register_tile(channels, 1, True, target)
    if channels % lanes:
        return None
    blocks = channels // lanes
    group = max(d for d in range(1, registers_fit(lanes, target) + 1) if blocks % d == 0)
    loops = sch.get_loops(block)
    co, cg, ci = sch.split(loops[0], factors=[None, group, lanes])
    sch.reorder(co, *loops[1:], cg, ci)
    sch.parallel(co)
    sch.unroll(cg)
    sch.vectorize(ci)
    sch.decompose_reduction(block, loops[1])
    for rv in epilogue:
        sch.reverse_compute_at(rv, co)
    return sch


def channel_tail(channels: int, target, reduction=0) -> int:
    """Output channels left to a half-width vector where the widest one does not divide them: on AVX-512, 728
    channels run 720 in 16 lanes and 8 in 8 (one 8-lane vector throughout uses half of each register: 1x1
    728->728 on 19x19 4.1 ms against 2.9 for 720 channels, Xeon, 2026-12-06). 0: one width throughout, and for
    fewer than 64 weights per output channel (a depthwise 3x3, bound by memory: 0.12 -> 0.25 ms in two parts)."""
    widest = vector_lanes(target)
    if (register_bits(target) < widest * 32 or channels < 2 * widest or channels % (widest // 2)
            or not isinstance(reduction, int) or reduction < 64):
        return 0
    return channels % widest


def _in_channel_parts(sch, block, spatial: int, main: int, epilogue, target):
    """The convolution as two: channels [0, main) and the rest, each tiled with its own vector width (TVM's
    loop_partition of the channel loop, moved outermost). The epilogue then runs once over the whole output."""
    loops = sch.get_loops(block)
    sch.reorder(loops[spatial - 1], *loops[:spatial - 1])
    head, rest = sch.loop_partition(sch.get_loops(block)[0], [main, None])
    (child,) = sch.get_child_blocks(head)
    nest = sch.get_loops(child)
    sch.reorder(*nest[1:spatial], nest[0])
    sch = _tile(sch, child, spatial, target, [])       # a schedule copy, where the weights were packed
    if sch is None:
        raise ValueError("the channels' main part could not be tiled")
    # the rest is one half-width vector, in a loop that does not start at 0 (TVM cannot split it): pixels in
    # register tiles of the largest divisor the registers hold, the vector innermost
    (child,) = sch.get_child_blocks(rest)
    nest = sch.get_loops(child)
    pixels = sch.fuse(*nest[1:spatial])
    count = get_extent(sch, pixels)
    rows = max(r for r in range(1, registers_fit(get_extent(sch, nest[0]), target) + 1) if count % r == 0)
    po, pi = sch.split(pixels, factors=[None, rows])
    sch.reorder(po, *nest[spatial:], pi, nest[0])
    sch.parallel(po)
    sch.unroll(pi)
    sch.vectorize(nest[0])
    sch.decompose_reduction(child, nest[spatial])
    for rv in epilogue:
        nest = sch.get_loops(rv)
        fused = sch.fuse(*nest) if len(nest) > 1 else nest[0]
        outer, inner = sch.split(fused, factors=[None, vector_lanes(target) // 2])
        sch.parallel(outer)
        sch.vectorize(inner)
    return sch


def _tile(sch, block, spatial: int, target, epilogue):
    """The register tile of one convolution block (register_tile), or None when its epilogue cannot follow."""
    loops = sch.get_loops(block)
    s_loops, r_loops = loops[:spatial], loops[spatial:]
    channels = get_extent(sch, s_loops[-1])
    # a 1x1 kernel reads its input pixels in order: all pixels are one loop, tiled; a larger kernel is tiled
    # along the width only (a fused index would cost a division and the padding's test on every load)
    pointwise = all(get_extent(sch, r) == 1 for r in r_loops[:-1])
    extents = [get_extent(sch, loop) for loop in s_loops[:-1]]
    count = _product(extents) if pointwise or spatial == 2 else extents[-1]
    width = extents[-1] if pointwise and spatial > 2 else None
    lanes, rows = register_tile(channels, count, pointwise, target, width)
    chunk = weight_chunk(channels // lanes if channels % lanes == 0 else 0,
                         _product([get_extent(sch, r) for r in r_loops]), lanes)
    if isinstance(count, int) and (count % rows or not aligned(rows, width)) and pointwise and spatial > 2:
        try:
            return _in_width_parts(sch, s_loops, len(r_loops), lanes, rows, chunk, epilogue)
        except Exception:  # noqa: BLE001 - a nest loop_partition or the epilogue cannot take: leave it alone
            return None
    outer = None
    if pointwise or spatial == 2:
        pixels = sch.fuse(*s_loops[:-1]) if spatial > 2 else s_loops[0]
    else:
        outer, pixels = (sch.fuse(*s_loops[:-2]) if spatial > 3 else s_loops[0]), s_loops[-2]
    if chunk:
        cc, co, ci = sch.split(s_loops[-1], factors=[None, chunk, lanes])
    else:
        cc, (co, ci) = None, sch.split(s_loops[-1], factors=[None, lanes])
    po, pi = sch.split(pixels, factors=[None, rows])
    sch.reorder(*[l for l in (cc, outer) if l is not None], po, co, *r_loops, pi, ci)
    sch, packed = _packed(sch, block, spatial, cc, lanes) if chunk else (sch, False)
    po = sch.fuse(*[l for l in (None if packed else cc, outer, po) if l is not None])
    sch.parallel(po)
    sch.vectorize(ci)
    if rows > 1:
        sch.unroll(pi)
    sch.decompose_reduction(block, r_loops[0])
    try:
        for rv in epilogue:
            sch.reverse_compute_at(rv, co)
    except Exception:  # noqa: BLE001 - an epilogue that cannot follow the tile: leave the function alone
        return None
    return sch


def weight_chunk(blocks: int, reduction, lanes: int) -> int:
    """Channel blocks per weight chunk: the outermost loop takes chunks whose weights stay in the L2 cache, so
    every pixel tile reuses them there (728x728 weights, 2.1 MB, were read again from L3 per tile)."""
    if not blocks or not isinstance(reduction, int):
        return 0
    best = max([d for d in range(1, blocks + 1) if blocks % d == 0 and reduction * d * lanes * 4 <= CHUNK_BYTES]
               or [1])
    return 0 if best == blocks else best          # all the weights fit: no chunks


def _packed(sch, block, spatial: int, chunk_loop, lanes: int):
    """(schedule, True) with each weight chunk copied, once per inference, into a buffer of its own (rows of
    chunk x lanes channels) before the pixel tiles read it; the chunk loop then runs serially and the tiles in
    parallel. In place, a weight row of 2048 floats is 8 KB: a chunk's rows fall into a few cache sets and miss
    the L2 (1x1 1536->2048 on 10x10: 29.6 -> 7.6 ms; 1024->1536 12.0 -> 3.6; 728->1024 on 19x19 10.3 -> 4.3;
    Xeon, 2 threads, 2026-12-06). Only rows of a multiple of ALIASING_BYTES: 728 channels (2,912 bytes) alias
    little, and the serial chunks cost 728->728 on 19x19 3.5 -> 4.5 ms. (sch, False) where not packed."""
    trial = sch.copy()
    try:
        return (trial, True) if _pack_chunk(trial, block, spatial, chunk_loop, lanes) else (sch, False)
    except Exception:  # noqa: BLE001 - TVM raises ScheduleError subclasses: the chunks stay in place
        return sch, False


def _pack_chunk(sch, block, spatial: int, chunk_loop, lanes: int) -> bool:
    info = sch.get(block)
    channel = info.iter_vars[spatial - 1].var
    reduction = {v.var for v in info.iter_vars[spatial:]}
    for index, read in enumerate(info.reads):
        used = {v for r in read.region for v in tirx.analysis.undefined_vars(r.min)}
        if channel in used and used <= reduction | {channel}:
            row = int(read.source.shape[-1]) * tvm.DataType(read.source.dtype).bits // 8
            if row % ALIASING_BYTES:
                return False
            copy = sch.cache_read(block, index, "global")
            sch.compute_at(copy, chunk_loop)
            nest = sch.get_loops(copy)
            at = next(i for i, loop in enumerate(nest) if sch.get(loop).same_as(sch.get(chunk_loop)))
            fused = sch.fuse(*nest[at + 1:])
            outer, inner = sch.split(fused, factors=[None, lanes])
            sch.parallel(outer)
            sch.vectorize(inner)
            return True
    return False


def _product(extents):
    out = 1
    for extent in extents:
        if not isinstance(extent, int):
            return extent
        out *= extent
    return out


def _in_width_parts(sch, s_loops, reductions: int, lanes: int, rows: int, chunk: int, epilogue):
    """A 1x1 convolution whose pixel count has no divisor the registers hold (19x19 on AVX2, 37x37 on both ISAs):
    image rows in parallel, each row's width cut into parts of at most ``rows`` pixels, one register tile each
    (TVM's loop_partition: no predicate), and the epilogue after each image row."""
    outer = sch.fuse(*s_loops[:-2]) if len(s_loops) > 3 else s_loops[0]
    if chunk:                                 # weight chunks outermost, as in ConvLike's main path
        cc, rest = sch.split(s_loops[-1], factors=[None, chunk * lanes])
        sch.reorder(cc, outer, s_loops[-2], rest)
        sch, packed = _packed(sch, sch.get_child_blocks(rest)[0], len(s_loops), cc, lanes)
        if not packed:
            outer = sch.fuse(cc, outer)
    for rv in epilogue:
        sch.reverse_compute_at(rv, outer)
    parts = width_parts(get_extent(sch, s_loops[-2]), rows)
    loops = sch.loop_partition(s_loops[-2], parts[:-1] + [None]) if len(parts) > 1 else [s_loops[-2]]
    for loop in loops:
        (block,) = sch.get_child_blocks(loop)
        nest = sch.get_loops(block)
        width, channel, reduce = nest[-reductions - 2], nest[-reductions - 1], nest[-reductions:]
        co, ci = sch.split(channel, factors=[None, lanes])
        sch.reorder(co, *reduce, width, ci)
        sch.vectorize(ci)
        sch.unroll(width)
        sch.decompose_reduction(block, reduce[0])
    for rv in epilogue:
        last = sch.get_loops(rv)[-1]
        extent = get_extent(sch, last)
        if isinstance(extent, int) and extent % lanes == 0:
            sch.vectorize(sch.split(last, factors=[None, lanes])[1])
    sch.parallel(outer)
    return sch
