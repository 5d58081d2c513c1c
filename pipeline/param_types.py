"""Building blocks shared by every params section (``pipeline.params`` and the train section).

Counts that drive work (processes, batches, images, steps) are bounded, so a typo such as
``workers: 10000`` or ``steps: 1e12`` stops with one line instead of forking hundreds of
processes or running for ever.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pipeline.parallel import available_cores

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
# torch's CPU threads for a stage: auto (pipeline.devices.cpu_threads) or a count.
Threads = Literal["auto"] | Annotated[int, Field(ge=1, le=1024)]

PROCESSES_PER_CORE = 4


def _processes_for_this_machine(value: int) -> int:
    cores = available_cores()
    limit = PROCESSES_PER_CORE * cores
    if value > limit:
        raise ValueError(
            f"at most {PROCESSES_PER_CORE} processes per core, {limit} on this machine's "
            f"{cores} cores"
        )
    return value


# Worker processes: 0 means one per core; more than 4 per core only thrashes.
Workers = Annotated[int, Field(ge=0), AfterValidator(_processes_for_this_machine)]
# Images per forward pass or optimizer step.
BatchSize = Annotated[int, Field(ge=1, le=4096)]
# Images or samples a metric draws (the papers use 50k).
ImageCount = Annotated[int, Field(ge=1, le=1_000_000)]
# Rows or columns of a picture grid.
GridSide = Annotated[int, Field(ge=1, le=64)]
# Optimizer steps of a training run (StyleGAN2-ADA's longest runs are under 1M).
StepCount = Annotated[int, Field(ge=1, le=10_000_000)]


class Section(BaseModel):
    """A params section: strict (an unknown key is an error) and read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)
