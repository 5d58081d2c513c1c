"""Show that the learning tests (tests/test_learning.py) catch a broken model: run them with
each model broken on purpose, and print which failed with the figures they measured.

    python bench/learning_breaks.py [--breaks none reversed-loss no-ema augmented-samples]
                                    [--models dcgan ...] [--seeds 0 1 2]

Breaks, patched in from outside (the library has no switch for them):

- ``reversed-loss``: G's loss negated (G learns to look fake to D);
- ``no-ema``: the EMA update skipped, so G_ema, which samples, stays at its initial weights;
- ``augmented-samples``: the sampler's images pass through D's augmentation (DiffAugment or
  ADA, at the run's strength), as if a grid or metric sampled through ``ctx.augment``.
  Only models trained with augmentation (lightweight, stylegan2); for the others it is
  the identity, so it is reported as not applicable and not run.

``none`` runs the tests unbroken; with ``--seeds`` every run repeats per seed (the data,
weights and samples all follow it), which checks the thresholds' margins. Each test takes
10-30 s on one thread: the default 4 breaks × 5 models × 1 seed about 8 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.augment import BatchPart  # noqa: E402
from pipeline.models.base import with_modules  # noqa: E402
from pipeline.training import loop  # noqa: E402
from tests import learning_helpers  # noqa: E402
from tests.learning_helpers import MODELS  # noqa: E402

BREAKS = ("none", "reversed-loss", "no-ema", "augmented-samples")
TEST = str(REPO / "tests" / "test_learning.py::test_model_learns_the_coloured_shapes")
AUGMENTED = ("lightweight", "stylegan2")  # the models the tests train with augmentation


def reversed_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.models.dcgan import DCGAN  # ProGAN inherits DCGAN's
    from pipeline.models.lightweight import LightweightGAN
    from pipeline.models.stargan2 import StarGAN2
    from pipeline.models.stylegan2 import StyleGAN2

    for cls in (LightweightGAN, StyleGAN2, DCGAN, StarGAN2):
        g_loss = cls.__dict__["g_loss"]
        monkeypatch.setattr(cls, "g_loss", lambda self, b, c, f=g_loss: -f(self, b, c))


def no_ema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "update_ema", lambda ema, model, beta: None)


def augmented_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    def sampler(trainer: loop.Trainer):
        view = with_modules(trainer.model, trainer.ema)
        plain = view.sample

        def sample(z, labels=None, truncation_psi=1.0, truncation_cutoff=None):
            images = plain(z, labels, truncation_psi, truncation_cutoff)
            generator = torch.Generator().manual_seed(len(z))
            part = BatchPart(len(images), 0)
            return trainer.augmenter.for_step(trainer.state.step, generator, part)(images)

        view.sample = sample
        return view

    monkeypatch.setattr(loop.Trainer, "sampler", property(sampler))


PATCHES = {"reversed-loss": reversed_loss, "no-ema": no_ema, "augmented-samples": augmented_samples}


class BreakPlugin:
    """Applies one break around each test's call and keeps each test's outcome and figures."""

    def __init__(self, name: str, seed: int):
        self.name, self.seed, self.results = name, seed, {}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setattr(learning_helpers, "SEED", self.seed)
            if self.name in PATCHES:
                PATCHES[self.name](monkeypatch)
            return (yield)

    def pytest_runtest_logreport(self, report):
        if report.when == "call":
            model = report.nodeid.rsplit("[", 1)[-1].rstrip("]")
            figures = dict(report.user_properties).get("learning")
            self.results[model] = (report.outcome, figures, report.duration)


def row(model: str, name: str, seed: int, outcome: str, figures: dict | None, took) -> str:
    if figures is None:
        return f"{model:<12}{name:<19}{seed:>4}  {outcome:<7} (no figures: {outcome})"
    start, end = figures["start"], figures["end"]
    return (
        f"{model:<12}{name:<19}{seed:>4}  {outcome:<7} {start['distance']:6.3f} → "
        f"{end['distance']:6.3f}  ×{figures['distance_ratio']:4.2f}  "
        f"{end['modes_covered']}/{len(end['per_mode'])} {end['per_mode']!s:<22} "
        f"{end['recognised']:4.0%}  {end['off_background']:4.0%}  {took:5.1f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--breaks", nargs="+", choices=BREAKS, default=list(BREAKS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    print(f"{'model':<12}{'break':<19}{'seed':>4}  {'test':<7} {'distance':<16} {'ratio':<6} "
          f"{'modes (per mode)':<26} {'recog':<5} {'off':<5} {'time'}")  # fmt: skip
    expected_ok = True
    for name in args.breaks:
        models = [m for m in args.models if name != "augmented-samples" or m in AUGMENTED]
        for model in sorted(set(args.models) - set(models), key=args.models.index):
            print(f"{model:<12}{name:<19}{'':>4}  n/a     trained without augmentation")
        if not models:
            continue
        for seed in args.seeds:
            plugin = BreakPlugin(name, seed)
            tests = [f"{TEST}[{m}]" for m in models]
            with contextlib.redirect_stdout(sys.stderr):
                pytest.main(
                    [*tests, "-q", "-n", "0", "-p", "no:cacheprovider", "--no-header",
                     "--tb=no", "--rootdir", str(REPO)],
                    plugins=[plugin],
                )  # fmt: skip
            for model in models:
                outcome, figures, took = plugin.results.get(model, ("missing", None, 0.0))
                print(row(model, name, seed, outcome, figures, took), flush=True)
                expected_ok &= (outcome == "passed") == (name == "none")
    print("every break failed its test and every unbroken run passed" if expected_ok else
          "UNEXPECTED: a broken model passed or an unbroken one failed")  # fmt: skip
    return 0 if expected_ok else 1


if __name__ == "__main__":
    sys.exit(main())
