"""The one protocol every image-generation API adapter implements, and what it exchanges.

An adapter only translates: a :class:`~gates.canary.prompts.Prompt` plus a seed into an HTTP
path and JSON body, and a response body back into encoded images. Transport, timing, timeouts,
retries (there are none for measured requests) and error classification stay in the runner, so
that every API is measured the same way.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Protocol

from gates.canary.prompts import Prompt

__all__ = ["BadPayloadError", "ImageAPI", "ImageRequest", "decode_b64_image"]


class BadPayloadError(ValueError):
    """A successful HTTP answer whose body holds no usable image (classified ``bad_payload``)."""


@dataclass(frozen=True)
class ImageRequest:
    """What to POST: a path relative to the arm's base URL and a JSON body."""

    path: str
    body: dict[str, Any]


class ImageAPI(Protocol):
    """Translate prompts into one API's requests and its responses into images."""

    @property
    def name(self) -> str:
        """The ``--api`` name."""
        ...

    def request(self, prompt: Prompt, seed: int) -> ImageRequest:
        """The request drawing ``prompt`` with ``seed`` (all of ``prompt.batch`` images)."""
        ...

    def images(self, body: bytes) -> list[bytes]:
        """The encoded images of a 2xx response body, in order.

        Raises:
            BadPayloadError: invalid JSON, no images, or an image that is not base64.
        """
        ...


def decode_b64_image(value: Any, where: str) -> bytes:
    """Decode one base64 image (a ``data:image/...;base64,`` prefix is accepted).

    Raises:
        BadPayloadError: not a non-empty base64 string.
    """
    if not isinstance(value, str) or not value:
        raise BadPayloadError(f"{where} is not a base64 string")
    _, sep, tail = value.partition(";base64,")
    try:
        data = base64.b64decode(tail if sep else value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadPayloadError(f"{where} is not valid base64: {e}") from e
    if not data:
        raise BadPayloadError(f"{where} is empty")
    return data
