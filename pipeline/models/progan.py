"""Progressive DCGAN (PokeGAN; fade-in from ProGAN, Karras et al. 2018).

The DCGAN is built whole at the start, with an RGB layer per stage size; each stage of
``progan.stages`` runs it up to one more block (G gains an upsampling block, D a
downsampling one) for the stage's kimg. Which stage, and how far its new block has faded
in, are pure functions of the images shown (``ctx.kimg``), so a checkpoint holds them
through the engine's nimg and resumes exactly; G also keeps them in buffers
(``stage_size``/``stage_alpha``) so its EMA copy and a checkpoint's G_ema sample at the
stage they were trained to, upscaled (nearest) to the final size (``G(z)``), so grids,
evaluate and render see every stage at one size. Real images are shrunk to the stage
size with a box filter.
``freeze_previous`` trains only the newest block: the earlier ones take no gradient
(``requires_grad`` off, so the optimizer leaves them bit for bit as they were; batch-norm
running statistics, which are no weights, still follow the data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.models.base import Batch, StepContext
from pipeline.models.dcgan import DCGAN
from pipeline.models.registry import ProGANParams, stage_at, stage_ends


class ProGAN(DCGAN):
    name = "progan"

    def __init__(
        self,
        image_size: int,
        cfg: ProGANParams,
        batch_size: int = 0,
        *,
        for_sampling: bool = False,
        num_classes: int = 0,  # unconditional: a labelled dataset's labels are not used
    ):
        self.stages = cfg.growth(image_size)
        sizes = [stage.size for stage in self.stages]
        if sizes[-1] != image_size:
            raise ValueError(
                f"progan.stages: the stages end at {sizes[-1]} px but image_size is {image_size}"
            )
        super().__init__(image_size, cfg, rgb_sizes=sizes)
        self.sizes = sizes
        # where each stage ends, in images (the last one lasts to the end of training)
        self.ends = stage_ends(stage.kimg for stage in self.stages)
        self.G.stage_size.fill_(sizes[0])
        self.G.stage_alpha.fill_(1.0)

    def stage_index(self, kimg: float) -> int:
        return stage_at(self.ends, round(kimg * 1000))

    def stage_alpha(self, kimg: float) -> float:
        """How far the current stage's new block has faded in: 0 → 1 over ``fade_kimg``
        from the stage's start (1 for the first stage, and always with fade_kimg 0)."""
        index = self.stage_index(kimg)
        if index == 0 or not self.cfg.fade_kimg:
            return 1.0
        into = round(kimg * 1000) - self.ends[index - 1]
        return min(1.0, into / (self.cfg.fade_kimg * 1000))

    def lr_factors(self, kimg: float) -> dict[str, float]:
        lr = self.stages[self.stage_index(kimg)].lr
        factor = 1.0 if lr is None else lr / self.cfg.lr
        return {"G": factor, "D": factor}

    def stage_at(self, ctx: StepContext, phase: str) -> tuple[int, float]:
        index, alpha = self.stage_index(ctx.kimg), self.stage_alpha(ctx.kimg)
        size = self.sizes[index]
        self.G.stage_size.fill_(size)
        self.G.stage_alpha.fill_(alpha)
        ctx.logs["progan/stage"] = float(index)
        ctx.logs["progan/alpha"] = alpha
        ctx.logs["progan/size"] = float(size)
        self.set_trainable(phase, index, alpha < 1)
        return size, alpha

    def set_trainable(self, phase: str, index: int, fading: bool) -> None:
        """Only what stage ``index`` runs takes gradients in ``phase``'s network (G or
        D), and with ``freeze_previous`` only its new parts (its block and RGB layers):
        the others get ``requires_grad`` off, so no optimizer moves them (Adam skips a
        parameter without a gradient) and no gradient averaging gives them zeros. Set
        every step: the engine turns D's on again after G's step (and off during it, which
        this leaves alone by touching only ``phase``'s network)."""
        size = self.sizes[index]
        previous = self.sizes[index - 1] if index else None
        new_only = index > 0 and self.cfg.freeze_previous
        network, trains = (self.G, self._g_trains) if phase == "G" else (self.D, self._d_trains)
        for name, param in network.named_parameters():
            param.requires_grad_(trains(name, size, previous, fading, new_only))

    @staticmethod
    def _g_trains(name: str, size: int, previous, fading: bool, new_only: bool) -> bool:
        kind, _, rest = name.partition(".")
        if kind == "project":
            return not new_only
        res = int(rest.split(".")[0])
        if kind == "blocks":
            return res <= size and (not new_only or res == size)
        # to_rgb: the stage's, and the previous one while fading (frozen with the rest)
        return res == size or (fading and res == previous and not new_only)

    @staticmethod
    def _d_trains(name: str, size: int, previous, fading: bool, new_only: bool) -> bool:
        kind, _, rest = name.partition(".")
        if kind == "to_logit":
            return not new_only
        res = int(rest.split(".")[0])
        if kind == "blocks":  # block r takes r×r maps down to r/2
            return res <= size and (not new_only or res == size)
        return res == size or (fading and res == previous and not new_only)

    def reals(self, batch: Batch, size: int, alpha: float) -> torch.Tensor:
        """The reals shrunk to ``size`` (box filter); while fading, blended with their
        half-size version upsampled, as the fakes are (ProGAN)."""
        images = batch.images
        if size < images.shape[-1]:
            images = F.avg_pool2d(images, images.shape[-1] // size)
        if alpha < 1:
            coarse = F.interpolate(F.avg_pool2d(images, 2), scale_factor=2, mode="nearest")
            images = torch.lerp(coarse, images, alpha)
        return images

    def sampling_note(self) -> str | None:
        """What evaluate should say about metrics of a checkpoint from an earlier stage."""
        size = int(self.G.stage_size)
        if size >= self.image_size:
            return None
        return (
            f"a progan checkpoint at its {size} px stage: its images are upscaled (nearest) "
            f"to {self.image_size} px, so the metrics measure blocky images; compare those "
            "of last-stage checkpoints"
        )
