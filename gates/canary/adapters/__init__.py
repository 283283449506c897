"""Image-generation API adapters behind one protocol (:class:`ImageAPI`), chosen by name."""

from __future__ import annotations

from gates.canary.adapters.a1111 import A1111Txt2Img
from gates.canary.adapters.base import BadPayloadError, ImageAPI, ImageRequest
from gates.canary.adapters.openai import OpenAIImages

__all__ = ["API_NAMES", "A1111Txt2Img", "BadPayloadError", "ImageAPI", "ImageRequest",
           "OpenAIImages", "get_adapter"]

#: Names accepted by ``--api`` and the policy's ``canary.api``.
API_NAMES: tuple[str, ...] = ("openai", "a1111")


def get_adapter(name: str, *, model: str | None = None) -> ImageAPI:
    """The adapter called ``name`` (``model`` is sent by the OpenAI adapter only).

    Raises:
        ValueError: an unknown API name.
    """
    if name == "openai":
        return OpenAIImages(model=model)
    if name == "a1111":
        return A1111Txt2Img()
    raise ValueError(f"api must be one of {', '.join(API_NAMES)}, got {name!r}")
