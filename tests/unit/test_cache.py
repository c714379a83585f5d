import os
import threading

import pytest

from pipeline.cache import StageCache, sha256_file, stage_key

BASE = dict(stage="convert", version=1, inputs={"model": "aa"}, config={"kind": "tflite-int8"},
            versions={"tensorflow": "2.21.0"})


@pytest.mark.parametrize("field,value", [
    ("stage", "check"), ("version", 2), ("inputs", {"model": "ab"}), ("config", {"kind": "tflite-fp32"}),
    ("versions", {"tensorflow": "2.22.0"}),
])
def test_key_depends_on_every_component(field, value):
    assert stage_key(**BASE) != stage_key(**(BASE | {field: value}))


def test_key_is_stable_and_order_free():
    assert stage_key(**BASE) == stage_key(**(BASE | {"config": {"kind": "tflite-int8"}}))
    a = stage_key(**(BASE | {"inputs": {"a": "1", "b": "2"}}))
    b = stage_key(**(BASE | {"inputs": {"b": "2", "a": "1"}}))
    assert a == b


def test_produce_then_lookup(tmp_path):
    cache = StageCache(tmp_path)
    assert cache.lookup("s", "k1") is None
    entry = cache.produce("s", "k1", lambda out: (out / "a.bin").write_bytes(b"hello"))
    again = cache.lookup("s", "k1")
    assert again is not None and again.path == entry.path
    assert entry.files == {"a.bin": sha256_file(entry.file("a.bin"))}


def test_failure_is_not_cached_and_leaves_nothing(tmp_path):
    cache = StageCache(tmp_path)

    def fails(out):
        (out / "partial.bin").write_bytes(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.produce("s", "k1", fails)
    assert cache.lookup("s", "k1") is None
    assert list((tmp_path / "stages" / "s").iterdir()) == []


def test_interrupt_leaves_no_partial_entry(tmp_path):
    cache = StageCache(tmp_path)

    def interrupted(out):
        (out / "partial.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.produce("s", "k1", interrupted)
    assert list((tmp_path / "stages" / "s").iterdir()) == []
    cache.produce("s", "k1", lambda out: (out / "ok.bin").write_bytes(b"x"))
    assert cache.lookup("s", "k1").files.keys() == {"ok.bin"}


def test_entry_with_missing_file_is_a_miss(tmp_path):
    cache = StageCache(tmp_path)
    entry = cache.produce("s", "k1", lambda out: (out / "a.bin").write_bytes(b"x"))
    os.unlink(entry.file("a.bin"))
    assert cache.lookup("s", "k1") is None


def test_stale_tmp_of_dead_process_is_removed(tmp_path):
    stage_dir = tmp_path / "stages" / "s"
    stale = stage_dir / ".tmp-deadbeef-999999999-1"
    stale.mkdir(parents=True)
    StageCache(tmp_path).produce("s", "k1", lambda out: (out / "a").write_text("x"))
    assert not stale.exists()


def test_concurrent_producers_publish_one_good_entry(tmp_path):
    cache = StageCache(tmp_path)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def work(out):
        barrier.wait(timeout=10)
        (out / "a.bin").write_bytes(b"same")

    def producer():
        try:
            results.append(cache.produce("s", "k1", work))
        except Exception as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=producer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 2 and results[0].path == results[1].path
    assert results[0].file("a.bin").read_bytes() == b"same"
    assert [p.name for p in (tmp_path / "stages" / "s").iterdir()] == ["k1"]
