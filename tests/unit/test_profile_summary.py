"""The profile's figures from per-run timings (benchmarks.profile.summarize), without TVM."""
import pytest

from benchmarks.profile import summarize


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
