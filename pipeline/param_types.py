"""Building blocks shared by every params section (``pipeline.params`` and the train section)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
# torch's CPU threads for a stage: auto (pipeline.devices.cpu_threads) or a count.
Threads = Literal["auto"] | Annotated[int, Field(ge=1, le=1024)]


class Section(BaseModel):
    """A params section: strict (an unknown key is an error) and read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)
