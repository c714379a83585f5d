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
