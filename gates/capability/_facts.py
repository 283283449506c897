"""The strict, immutable base of every snapshot fact model.

Why its own module: the snapshot (:mod:`gates.capability.snapshot`) and the ONNX Runtime
settings (:mod:`gates.capability.ort_settings`) share it, and the snapshot imports the settings.
Derived values (``computed_field``) are serialized for readers and, when a document is read
back, recomputed and checked: an edited or stale derived value is rejected, not trusted.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ModelWrapValidatorHandler, model_validator
from pydantic_core import to_jsonable_python

__all__ = ["Facts"]


class Facts(BaseModel):
    """Strict, immutable base; computed fields are checked, not trusted, on input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="wrap")
    @classmethod
    def _recompute_derived(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        derived = cls.model_computed_fields
        if not isinstance(data, dict) or not derived.keys() & data.keys():
            return handler(data)
        claimed = {k: data[k] for k in derived if k in data}
        model = handler({k: v for k, v in data.items() if k not in derived})
        actual = model.model_dump(mode="json", include=set(claimed))
        for key, value in claimed.items():
            if to_jsonable_python(value) != actual[key]:
                raise ValueError(
                    f"{key}: the document says {value!r}, but its facts give {actual[key]!r}"
                )
        return model
