"""One place per extension point. A throwaway model added as one file, its params class
and row in the table (pipeline/models/registry.py) and its params.yaml section trains,
samples and renders with nothing else in the package touched; a model that declares a
capability it lacks fails when built, not inside a later stage; a metric with a network of
its own is one file of pipeline/metrics/ and its name in MetricName."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.models import MODELS, build_model
from pipeline.models.base import Capability, GANModel, MissingCapability
from pipeline.training.params import TrainParams

REPO = Path(__file__).resolve().parents[1]

# The throwaway model's whole file: a linear z→G and a linear D with the hinge loss.
TINY_MODEL = """
import torch
from torch import nn

from pipeline.models.base import Batch, DLoss, GANModel, StepContext


class TinyGAN(GANModel):
    name = "tiny"
    default_augment = "none"

    def __init__(self, image_size, cfg, batch_size=0, *, for_sampling=False, num_classes=0):
        super().__init__()
        self.cfg, self.latent_dim, pixels = cfg, cfg.latent_dim, 3 * image_size**2
        shape = (3, image_size, image_size)
        self.G = nn.Sequential(nn.Linear(cfg.latent_dim, pixels), nn.Tanh(), nn.Unflatten(1, shape))
        self.D = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 1))

    def optimizers(self):
        return {name: torch.optim.Adam(net.parameters(), self.cfg.lr) for name, net in
                (("G", self.G), ("D", self.D))}

    def d_loss(self, batch: Batch, ctx: StepContext) -> DLoss:
        real = self.D(ctx.augment(batch.images)).squeeze(1)
        fake = self.D(ctx.augment(self.fakes(batch, ctx).detach())).squeeze(1)
        loss = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
        ctx.logs["loss/D"] = loss.detach()
        return DLoss(loss, real.detach())

    def g_loss(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        loss = -self.D(ctx.augment(self.fakes(batch, ctx))).mean()
        ctx.logs["loss/G"] = loss.detach()
        return loss
"""

# What the table gains: the params class and the row.
TINY_ROW = '''

class TinyParams(ModelParams):
    """A throwaway model (tests/test_model_table.py)."""

    latent_dim: PositiveInt = 8
    lr: Annotated[float, Field(gt=0)] = 1e-3


MODELS["tiny"] = ModelSpec("tiny", "pipeline.models.tiny:TinyGAN", TinyParams, "a test's model")
'''

# Run in a copy of the package that has the throwaway model: its params.yaml section
# (train.tiny, written as a user would), training, sampling from the checkpoint and the
# renders it can draw.
SCRIPT = """
import json, sys
from pathlib import Path
import torch, yaml
from pipeline.params import load_params
from pipeline.render.run import unsupported
from pipeline.training.checkpoint import load_generator
from pipeline.training.loop import train

root = Path(sys.argv[1])
raw = yaml.safe_load((root / "params.yaml").read_text())
raw["train"].update(model="tiny", data=sys.argv[2], image_size=16, steps=40, batch_size=8,
                    workers=0, checkpoint_every=40, sample_every=40, log_every=10,
                    snapshot_every=None, tiny={"latent_dim": 4, "lr": 0.01})
(root / "params.yaml").write_text(yaml.safe_dump(raw))
params = load_params(root / "params.yaml").train
torch.set_num_threads(1)
trainer = train(params, root / "run", live_dir=None)
trained = load_generator(root / "run/checkpoints/latest.pt")
images = trained.sample(torch.randn(3, trained.latent_dim))
print(json.dumps({
    "section": params.tiny.model_dump(),
    "step": trainer.state.step,
    "losses": [trainer.last_logs["loss/D"], trainer.last_logs["loss/G"]],
    "sample": list(images.shape),
    "capabilities": sorted(trained.capabilities),
    "unsupported": sorted(unsupported(trained, trained.model)),
}))
"""


def test_a_new_model_is_one_file_and_its_params_section(tmp_path):
    from tests.train_helpers import flowers

    copy = tmp_path / "copy"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "pipeline", copy / "pipeline", ignore=ignore)
    shutil.copy(REPO / "params.yaml", copy / "params.yaml")
    (copy / "pipeline/models/tiny.py").write_text(TINY_MODEL)
    table = copy / "pipeline/models/registry.py"
    table.write_text(table.read_text() + TINY_ROW)
    data = flowers(tmp_path / "flowers", 8, 16)

    changed = sorted(
        path.relative_to(copy).as_posix()
        for path in (copy / "pipeline").rglob("*.py")
        if not (REPO / path.relative_to(copy)).exists()
        or (REPO / path.relative_to(copy)).read_bytes() != path.read_bytes()
    )
    assert changed == ["pipeline/models/registry.py", "pipeline/models/tiny.py"]

    env = {**os.environ, "PYTHONPATH": str(copy)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(copy), str(data)],
        cwd=copy, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["section"] == {"latent_dim": 4, "lr": 0.01}
    assert result["step"] == 40 and all(abs(loss) < 100 for loss in result["losses"])
    assert result["sample"] == [3, 3, 16, 16]
    assert result["capabilities"] == []  # a plain z → G model: no W space, no translation
    assert "truncation" in result["unsupported"] and "fakes" not in result["unsupported"]


def test_the_table_gives_train_model_and_a_section_per_model():
    assert TrainParams.model_fields["model"].default == "lightweight"
    for name, spec in MODELS.items():
        assert isinstance(getattr(TrainParams(), name), spec.params)
        assert issubclass(spec.load(), GANModel) and spec.load().name == name
    with pytest.raises(ValueError, match="Input should be 'lightweight'"):
        TrainParams(model="tiny")


def test_capabilities_are_declared_and_checked_when_built():
    declared = {name: spec.load().capabilities for name, spec in MODELS.items()}
    assert declared["stylegan2"] == {Capability.W_SPACE, Capability.STYLE_WEIGHTS}
    assert declared["stargan2"] == {Capability.TRANSLATION}
    assert declared["lightweight"] == declared["dcgan"] == declared["progan"] == frozenset()

    class Pretender(MODELS["dcgan"].load()):
        """An image-to-image model in name only: it declares translation, has none."""

        name = "pretender"
        capabilities = frozenset({Capability.TRANSLATION})

    params = TrainParams(model="dcgan", image_size=16, dcgan={"channels": 4, "latent_dim": 8})
    model = Pretender(16, params.dcgan)
    with pytest.raises(TypeError, match="declares translation but its model has no translate"):
        model.check_capabilities()
    plain = build_model(params)
    with pytest.raises(MissingCapability, match="dcgan cannot translate images"):
        plain.require(Capability.TRANSLATION, "translate images")
    with pytest.raises(MissingCapability, match="no mapping network"):
        plain.sample(torch.randn(2, 8), truncation_psi=0.5)


# A throwaway metric with a network of its own, as one file of pipeline/metrics/.
SHARPNESS_METRIC = """
import torch

from pipeline.metrics.networks import register_network
from pipeline.metrics.registry import MetricContext, register_metric


def load_sharpnet(cfg):
    if cfg.seed == 1:
        return None, "sharpnet weights unavailable: put sharpnet.pt in evaluate.weights_dir"
    return torch.nn.Conv2d(1, 1, 3, bias=False), None


register_network("sharpnet", load_sharpnet)


@register_metric(networks=("sharpnet",))
def sharpness(ctx: MetricContext):
    net = ctx.network("sharpnet")
    torch.nn.init.constant_(net.weight, 1.0)
    return {"sharpness": float(net(torch.ones(1, 1, 3, 3)).item())}
"""

METRIC_SCRIPT = """
import json
import torch
from pipeline.metrics import networks, registry
from pipeline.params import EvaluateParams

cfg = EvaluateParams(metrics=("fid", "sharpness"))
asked = registry.networks_for(cfg.metrics)
results = {}
for seed in (0, 1):
    loaded = networks.load_networks(cfg.model_copy(update={"seed": seed}), ["sharpnet"])
    ctx = registry.MetricContext(cfg, None, torch.device("cpu"), None, networks=loaded)
    results[seed] = [registry.run_metric(registry.get_metric("sharpness"), ctx), ctx.notes]
print(json.dumps({"metrics": registry.list_metrics(), "asked": sorted(asked), "results": results}))
"""


def test_a_new_metric_with_its_own_network_is_one_file_and_its_name(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(
        REPO / "pipeline", copy / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    (copy / "pipeline/metrics/sharpness.py").write_text(SHARPNESS_METRIC)
    params = copy / "pipeline/params.py"
    text = params.read_text()
    assert '    "translation",\n]  # fmt: skip' in text
    params.write_text(text.replace('    "translation",\n]', '    "translation", "sharpness",\n]'))

    env = {**os.environ, "PYTHONPATH": str(copy)}
    done = subprocess.run(
        [sys.executable, "-c", METRIC_SCRIPT], cwd=copy, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["metrics"][-1] == "sharpness"
    assert result["asked"] == ["inception", "sharpnet"]  # the union evaluate loads
    assert result["results"]["0"] == [{"sharpness": 9.0}, {}]
    assert result["results"]["1"][0] == {"sharpness": None}
    assert result["results"]["1"][1]["sharpness"].startswith("sharpnet weights unavailable")
