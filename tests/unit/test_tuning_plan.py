"""How make tune splits its trial budget over the model's functions."""
from pipeline.tvm.records import Task, allocate


def task(key, flops, weight=1, precision="fp32"):
    return Task(key=key, name=f"f{key}", precision=precision, weight=weight, mod=None, flops=flops)


def test_budget_is_never_exceeded_and_follows_the_cost():
    tasks = [task("a", 2e9), task("b", 1e8), task("c", 1e8, weight=8), task("d", 1.0)]
    plan = allocate(tasks, 100)
    assert sum(plan.values()) <= 100
    assert plan["a"] > plan["c"] > plan["b"] > plan["d"]
    assert plan["d"] >= 100 // 3 // 4 - 1                     # every function gets its even share


def test_a_function_shared_by_fp32_and_int8_is_tuned_once():
    tasks = [task("a", 1e9), task("a", 1e9, precision="int8"), task("b", 1e9)]
    plan = allocate(tasks, 90)
    assert set(plan) == {"a", "b"} and sum(plan.values()) <= 90
    assert plan["a"] > plan["b"]                                # twice the calls, more trials


def _loader(calls):
    def load(workloads, records):
        calls.append(records.read_text())
        if "bad" in records.read_text():
            raise RuntimeError("parallel_for_dynamic error with (not rendered)")
    return load


def test_records_that_cannot_be_read_back_are_dropped_and_only_this_runs(tmp_path):
    from pipeline.tvm.tuning import drop_unloadable

    records = tmp_path / "database_tuning_record.json"
    records.write_text("old1\nold2\nnew1\nnew-bad\nnew2\n")
    calls = []
    assert drop_unloadable(tmp_path / "w.json", records, 2, _loader(calls)) == 1
    assert records.read_text() == "old1\nold2\nnew1\nnew2\n"
    assert calls[1:-1] == ["new1\n", "new-bad\n", "new2\n"]


def test_loadable_records_are_left_as_they_are(tmp_path):
    from pipeline.tvm.tuning import drop_unloadable

    records = tmp_path / "database_tuning_record.json"
    records.write_text("a\nb\n")
    calls = []
    assert drop_unloadable(tmp_path / "w.json", records, 1, _loader(calls)) == 0
    assert records.read_text() == "a\nb\n" and len(calls) == 1


def test_an_unreadable_older_record_is_not_hidden(tmp_path):
    import pytest
    from pipeline.tvm.tuning import drop_unloadable

    records = tmp_path / "database_tuning_record.json"
    records.write_text("old-bad\nnew\n")
    with pytest.raises(RuntimeError):
        drop_unloadable(tmp_path / "w.json", records, 1, _loader([]))


def test_records_tvm_cannot_read_are_one_line_for_compile(tmp_path):
    import gzip
    import json

    import pytest
    from pipeline.errors import InputError
    from pipeline.tvm.tuning import FORMAT, RECORDS_GZ, SUMMARY, WORKLOADS_GZ, winning_database

    (tmp_path / SUMMARY).write_text(json.dumps({"format": FORMAT, "tasks": {}}))
    with gzip.open(tmp_path / WORKLOADS_GZ, "wt") as f:
        f.write("")
    with gzip.open(tmp_path / RECORDS_GZ, "wt") as f:
        f.write('[0, ["not a trace"]]\n')
    with pytest.raises(InputError, match=r"tuning records in .* cannot be read by TVM .*TUNED=0"):
        winning_database(tmp_path / SUMMARY, tmp_path / WORKLOADS_GZ, tmp_path / RECORDS_GZ)


def test_records_are_kept_and_found_by_the_instruction_set_they_were_tuned_on(tmp_path):
    from pipeline.tvm.records import TUNING_FILES, records_elsewhere, records_path

    avx2 = records_path(tmp_path, "host", "xception-299x299-1000", "avx2")
    assert avx2 == tmp_path / "host" / "avx2" / "xception-299x299-1000"
    assert records_elsewhere(tmp_path, "host", "xception-299x299-1000", "avx512-vnni") == []
    avx2.mkdir(parents=True)
    (avx2 / TUNING_FILES[0]).write_text("{}")
    (tmp_path / "host" / "sse" / "other-model").mkdir(parents=True)         # another model: not listed
    assert records_elsewhere(tmp_path, "host", "xception-299x299-1000", "avx512-vnni") == ["avx2"]
    assert records_elsewhere(tmp_path, "host", "xception-299x299-1000", "avx2") == []


def test_a_record_that_failed_to_replay_when_written_is_never_applied():
    from pipeline.tvm.records import uses_tuned

    fast = {"best_ms": 1.0, "default_ms": 2.0}
    assert uses_tuned(fast) and not uses_tuned(fast | {"replay_failed": True})
    assert uses_tuned(fast | {"replay_failed": False, "replay_failed_on": ["a twin"]})
