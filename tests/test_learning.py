"""Every model learns (issue 23 §2): trained from scratch on the CPU on a synthetic dataset
of coloured shapes, its sampler (G_ema, as grids and metrics see it) comes closer to the
data in sliced Wasserstein distance and covers all the colours but at most one.

A test that only checks that training runs passes with a broken loss or EMA;
``bench/learning_breaks.py`` breaks each model on purpose (G's loss sign reversed, no EMA
update, augmented samples) and shows these tests fail.
"""

from __future__ import annotations

import pytest

from tests.learning_helpers import (
    MAX_DISTANCE_RATIO,
    MAX_OFF_BACKGROUND,
    MIN_MODES,
    MIN_RECOGNISED,
    MODELS,
    learn_shapes,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("model", MODELS)
def test_model_learns_the_coloured_shapes(model, tmp_path, record_property):
    learning = learn_shapes(model, tmp_path)
    record_property("learning", learning.summary())  # bench/learning_breaks.py reads it
    start, end = learning.start, learning.end
    figures = (
        f"{model}: distance {start.distance:.3f} → {end.distance:.3f} "
        f"(×{learning.distance_ratio:.2f}), modes covered {end.modes_covered} "
        f"{end.per_mode}, recognised {end.recognised:.0%}, off the background "
        f"{end.off_background:.0%}"
    )
    assert learning.distance_ratio <= MAX_DISTANCE_RATIO, figures
    assert end.modes_covered >= MIN_MODES, figures
    assert end.recognised >= MIN_RECOGNISED, figures
    assert end.off_background <= MAX_OFF_BACKGROUND, figures


def test_every_model_in_the_table_has_a_learning_test():
    """A model added to the table without settings here would never be shown to learn."""
    from pipeline.models.registry import MODELS as TABLE

    assert set(MODELS) == set(TABLE)
