"""The profile's figures from per-run timings (benchmarks.profile.summarize), without TVM."""
import pytest

from benchmarks.profile import summarize
from benchmarks.profile_report import by_kind, format_profile, kind_of


def test_delays_landing_on_different_functions_do_not_make_the_parts_exceed_the_whole():
    # three runs of 3 functions, 1 ms each; in each run two of them are held up 4 ms (a scheduler tick on a
    # busy machine), a different two each time
    per_run = [{"a": 0.005, "b": 0.005, "c": 0.001},
               {"a": 0.001, "b": 0.005, "c": 0.005},
               {"a": 0.005, "b": 0.001, "c": 0.005}]
    totals = [sum(r.values()) + 0.0001 for r in per_run]
    p = summarize(per_run, totals, {"a": 1, "b": 1, "c": 1})
    # each function's median is 5 ms, and their sum (15 ms) is more than any whole inference (11.1 ms) ...
    assert {r["name"]: r["ms"] for r in p["functions"]} == pytest.approx({"a": 5.0, "b": 5.0, "c": 5.0})
    assert sum(r["ms"] for r in p["functions"]) > p["total_ms"] == pytest.approx(11.1)
    # ... so the time inside functions is the median of each run's own sum, which never exceeds the whole
    assert p["instrumented_ms"] == pytest.approx(11.0)
    assert p["runs"] == 3
    assert p["functions"][0]["share"] == pytest.approx(5.0 / 11.1)


def test_functions_are_ordered_slowest_first():
    p = summarize([{"a": 0.001, "b": 0.003}], [0.004], {"a": 2, "b": 1})
    assert [(r["name"], r["calls"]) for r in p["functions"]] == [("b", 1), ("a", 2)]


def test_a_function_missing_from_a_run_counts_as_zero_there():
    p = summarize([{"a": 0.002}, {"a": 0.002, "b": 0.003}, {"a": 0.002}], [0.003, 0.006, 0.003], {"a": 1, "b": 1})
    assert {r["name"]: r["ms"] for r in p["functions"]} == pytest.approx({"a": 2.0, "b": 0.0})
    assert p["instrumented_ms"] == pytest.approx(2.0)


@pytest.mark.parametrize("name, kind", [
    ("fused_conv2d18_add9_relu7", "fused_conv2d_add_relu"),
    ("fused_conv2d_add_relu", "fused_conv2d_add_relu"),
    ("int8_dot_conv9", "int8_dot_conv"),
    ("int8_dot_conv", "int8_dot_conv"),
    ("int8_depthwise27", "int8_depthwise"),
    ("fused_max_pool2d3_dequantize1", "fused_max_pool2d_dequantize"),
    ("fused_cast_uint8_add4", "fused_cast_uint8_add"),
    ("fused_cast_int16_multiply12", "fused_cast_int16_multiply"),
    ("fused_float32_mean2", "fused_float32_mean"),
    ("vm.builtin.alloc_storage", "vm.builtin.alloc_storage"),
])
def test_a_kind_is_the_name_without_tvms_numbering(name, kind):
    assert kind_of(name) == kind


def test_the_table_says_where_the_time_goes_per_kind_then_per_function():
    per_run = [{"int8_dot_conv": 0.004, "int8_dot_conv1": 0.003, "int8_depthwise": 0.002, "reshape1": 0.0005}]
    p = summarize(per_run, [0.01], {"int8_dot_conv": 1, "int8_dot_conv1": 2, "int8_depthwise": 1, "reshape1": 1})
    assert [(k["kind"], k["functions"], k["calls"]) for k in by_kind(p["functions"])] == [
        ("int8_dot_conv", 2, 3), ("int8_depthwise", 1, 1), ("reshape", 1, 1)]
    assert by_kind(p["functions"])[0]["ms"] == pytest.approx(7.0)
    text = format_profile(p, "x.so", top=2, top_kinds=2)
    assert "x.so: 10.0 ms per inference (median of 1, instrumented), 4 functions of 3 kinds." in text
    assert "| int8_dot_conv | 2 | 3 | 7.00 | 70.0% |" in text
    assert "| (1 other kinds) | 1 | 1 | 0.50 | 5.0% |" in text
    assert "| int8_dot_conv1 | 2 | 3.00 | 30.0% |" in text
    assert "| (2 others) | 2 | 2.50 | 25.0% |" in text
