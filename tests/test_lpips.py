import pytest
import torch

from pipeline.errors import StageError
from pipeline.lpips import LPIPS, TAP_CHANNELS, load_lpips
from tests.train_helpers import flowers, tiny


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """Random VGG16 + LPIPS weights saved in the upstream files' key layouts."""
    folder = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    model = LPIPS()
    vgg = {f"features.{k.split('.', 1)[1]}": v for k, v in model.vgg.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(1)  # torchvision's file has the classifier too
    torch.save(vgg, folder / "vgg16.pth")
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(TAP_CHANNELS)}
    torch.save(lin, folder / "vgg.pth")
    return folder / "vgg16.pth", folder / "vgg.pth"


def test_vgg16_layout_is_torchvisions():
    keys = list(LPIPS().vgg.state_dict())
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert keys == [f"features.{i}.{p}" for i in convs for p in ("weight", "bias")]


def test_distance_properties(random_weights):
    lpips = load_lpips(*random_weights)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    y = torch.rand(3, 3, 64, 64) * 2 - 1
    assert torch.allclose(lpips(x, x), torch.zeros(3), atol=1e-6)
    d_xy, d_yx = lpips(x, y), lpips(y, x)
    assert (d_xy > 0).all() and torch.allclose(d_xy, d_yx, rtol=1e-5)
    near = lpips(x, (x + 0.01 * torch.randn_like(x)).clamp(-1, 1))
    assert (near < d_xy).all()
    x.requires_grad_(True)
    lpips(x, y).sum().backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips.parameters())


def test_missing_weights_name_file_and_url(tmp_path):
    with pytest.raises(StageError) as err:
        load_lpips(weights_dir=tmp_path, download=False)
    message = str(err.value)
    assert "vgg16-397923af.pth: missing" in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert "\n" not in message


def test_wrong_files_are_one_line(random_weights):
    _, lin = random_weights
    with pytest.raises(StageError, match="not VGG16 \\+ LPIPS weights"):
        load_lpips(lin, lin)


def test_lightweight_trains_with_lpips_reconstruction(random_weights, tmp_path):
    from pipeline.training.loop import train

    vgg, lin = random_weights
    data = flowers(tmp_path / "flowers", count=8)
    light = dict(
        latent_dim=32,
        channels=8,
        attn_res=[16],
        recon_loss="lpips",
        lpips_vgg=str(vgg),
        lpips_lin=str(lin),
    )
    trainer = train(tiny(data, steps=2, lightweight=light), tmp_path / "out", live_dir=None)
    assert trainer.state.step == 2 and trainer.last_logs["loss/finite"] == 1.0
    assert trainer.last_logs["loss/D_recon"] > 0
