import dataclasses

import pytest

from pipeline.stages import STAGES
from pipeline.versions import TOOLS


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.NAME)
def test_every_stage_has_the_one_interface(stage):
    assert isinstance(stage.NAME, str) and isinstance(stage.VERSION, int) and stage.VERSION >= 1
    assert dataclasses.is_dataclass(stage.Config) and stage.Config.__dataclass_params__.frozen
    assert callable(stage.run)
    assert set(stage.TOOLS) <= set(TOOLS), "a stage's tools must be versioned (they are part of its cache key)"


def test_stage_names_are_unique():
    assert len({s.NAME for s in STAGES}) == len(STAGES)
