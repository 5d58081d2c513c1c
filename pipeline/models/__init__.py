"""GAN models the training engine can train, by name (``train.model``)."""

from __future__ import annotations

from pipeline.models.base import GANModel
from pipeline.training.params import TrainParams


def build_model(params: TrainParams, for_sampling: bool = False, num_classes: int = 0) -> GANModel:
    """The model ``train.model`` names. ``for_sampling``: only G will be used (evaluate,
    render), so a model may skip what only training needs (loss networks' weights).
    ``num_classes``: the dataset's classes (0: unlabelled); a model that can be
    conditional decides from its params whether it is."""
    if params.model == "lightweight":
        from pipeline.models.lightweight import LightweightGAN

        return LightweightGAN(params.image_size, params.lightweight, for_sampling)
    if params.model == "stylegan2":
        from pipeline.models.stylegan2 import StyleGAN2

        return StyleGAN2(
            params.image_size, params.stylegan2, params.batch_size, for_sampling, num_classes
        )
    if params.model == "dcgan":
        from pipeline.models.dcgan import DCGAN

        return DCGAN(params.image_size, params.dcgan)
    if params.model == "progan":
        from pipeline.models.progan import ProGAN

        return ProGAN(params.image_size, params.progan)
    if params.model == "stargan2":
        from pipeline.models.stargan2 import StarGAN2

        return StarGAN2(params.image_size, params.stargan2, for_sampling, num_classes)
    raise ValueError(f"unknown model {params.model!r}")


__all__ = ["GANModel", "build_model"]
