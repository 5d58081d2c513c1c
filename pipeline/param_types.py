"""Building blocks shared by every params section (``pipeline.params`` and the train section)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    """A params section: strict (an unknown key is an error) and read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)
