"""GAN models the training engine can train, by name (``train.model``): the table is
``pipeline.models.registry``. This package imports no torch until a model is built (the
base class is ``pipeline.models.base.GANModel``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.models.registry import MODELS, ModelSpec, model_spec

if TYPE_CHECKING:
    from pipeline.models.base import GANModel
    from pipeline.training.params import TrainParams


def build_model(params: TrainParams, for_sampling: bool = False, num_classes: int = 0) -> GANModel:
    """The model ``train.model`` names. ``for_sampling``: only G will be used (evaluate,
    render), so a model may skip what only training needs (loss networks' weights).
    ``num_classes``: the dataset's classes (0: unlabelled); a model that can be
    conditional decides from its params whether it is."""
    spec = model_spec(params.model)
    model = spec.load()(
        params.image_size,
        getattr(params, spec.name),
        params.batch_size,
        for_sampling=for_sampling,
        num_classes=num_classes,
    )
    model.check_capabilities()
    return model


def models_with(capability) -> list[str]:
    """The names of the models whose class declares ``capability`` (imports them: torch)."""
    return [name for name, spec in MODELS.items() if capability in spec.load().capabilities]


def models_able(capability) -> str:
    """``train.model=<name>`` for each model with ``capability``, for messages."""
    return " or ".join(f"train.model={name}" for name in models_with(capability))


__all__ = [
    "MODELS",
    "ModelSpec",
    "build_model",
    "model_spec",
    "models_able",
    "models_with",
]
