"""Request bodies of the two generation APIs, and their validation against the server's limits.

Both APIs forbid unknown fields: a client that sends ``sampler_name`` or ``quality`` gets a 400
naming the field instead of an image made with settings it did not ask for. Types are strict
(``"4"`` is not 4). Limits (sizes, steps, images, prompt length) come from the running server's
:class:`~sd_server.config.Limits` and are checked in :func:`to_job`, with the offending parameter
in the error.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, StrictStr, ValidationError

from sd_server.config import Limits
from sd_server.engine import GenerationSpec, Item

__all__ = [
    "A1111Request",
    "Defaults",
    "OpenAIImageRequest",
    "RequestError",
    "describe_validation_error",
    "to_job",
]

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_MAX_SEED = 2**63 - 1


class RequestError(ValueError):
    """A request the server will not run; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        self.param = param
        self.status = status
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenAIImageRequest(_Strict):
    """``POST /v1/images/generations``: OpenAI's fields plus seed, steps, guidance, negatives."""

    prompt: StrictStr
    n: StrictInt = 1
    size: StrictStr | None = None
    response_format: Literal["b64_json"] = "b64_json"
    model: StrictStr | None = None
    user: StrictStr | None = None
    seed: StrictInt | None = None
    steps: StrictInt | None = None
    guidance_scale: StrictFloat | StrictInt | None = None
    negative_prompt: StrictStr | None = None


class A1111Request(_Strict):
    """``POST /sdapi/v1/txt2img``: the AUTOMATIC1111 subset this server implements."""

    prompt: StrictStr = ""
    negative_prompt: StrictStr = ""
    seed: StrictInt = -1
    steps: StrictInt | None = None
    cfg_scale: StrictFloat | StrictInt | None = None
    width: StrictInt | None = None
    height: StrictInt | None = None
    batch_size: StrictInt = 1


@dataclass(frozen=True)
class Defaults:
    """What an omitted field means on this server."""

    size: int
    steps: int
    guidance_scale: float


def describe_validation_error(err: ValidationError) -> tuple[str, str | None]:
    """One readable line for a pydantic error, and the first offending field."""
    parts = []
    param = None
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        param = param or loc or None
        msg = "unknown field (not supported by this server)" if e["type"] == "extra_forbidden" \
            else e["msg"]
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts), param


def _side(value: int, name: str, limits: Limits) -> int:
    if value % 8 or not limits.min_side <= value <= limits.max_side:
        raise RequestError(
            f"{name} must be a multiple of 8 in [{limits.min_side}, {limits.max_side}], "
            f"got {value}",
            name,
        )
    return value


def _bounded(value: int, name: str, high: int) -> int:
    if not 1 <= value <= high:
        raise RequestError(f"{name} must be in [1, {high}], got {value}", name)
    return value


def _prompt(value: str, name: str, limits: Limits) -> str:
    if len(value) > limits.max_prompt_chars:
        raise RequestError(
            f"{name} is {len(value)} characters; the limit is {limits.max_prompt_chars}", name
        )
    return value


def to_job(
    req: OpenAIImageRequest | A1111Request, limits: Limits, defaults: Defaults
) -> tuple[GenerationSpec, list[Item]]:
    """Validate ``req`` against ``limits`` and return the batch key and one item per image.

    Image ``i`` of a request gets seed ``seed + i`` (AUTOMATIC1111's convention), so every image
    of a batch can be reproduced alone. No seed (or A1111's -1) draws one, returned to the client.

    Raises:
        RequestError: a value outside the server's limits.
    """
    if isinstance(req, OpenAIImageRequest):
        if req.size is None:
            width = height = defaults.size
        else:
            m = _SIZE.match(req.size)
            if m is None:
                raise RequestError(f"size must look like '512x512', got {req.size!r}", "size")
            width, height = int(m[1]), int(m[2])
        n, seed, guidance = req.n, req.seed, req.guidance_scale
        prompt, negative = req.prompt, req.negative_prompt
        n_name, guidance_name = "n", "guidance_scale"
    else:
        width = req.width if req.width is not None else defaults.size
        height = req.height if req.height is not None else defaults.size
        n, guidance = req.batch_size, req.cfg_scale
        seed = None if req.seed == -1 else req.seed
        prompt, negative = req.prompt, req.negative_prompt or None
        n_name, guidance_name = "batch_size", "cfg_scale"
    _side(width, "width", limits)
    _side(height, "height", limits)
    _bounded(n, n_name, limits.max_images)
    steps = _bounded(req.steps if req.steps is not None else defaults.steps, "steps",
                     limits.max_steps)
    scale = float(guidance if guidance is not None else defaults.guidance_scale)
    if not 0.0 <= scale <= limits.max_guidance_scale:
        raise RequestError(
            f"{guidance_name} must be in [0, {limits.max_guidance_scale}], got {scale}",
            guidance_name,
        )
    if seed is None:
        seed = secrets.randbelow(2**32)
    elif not 0 <= seed <= _MAX_SEED - n:
        raise RequestError(f"seed must be in [0, 2**63 - 1 - n] (or -1 in A1111), got {seed}",
                           "seed")
    _prompt(prompt, "prompt", limits)
    if negative is not None:
        _prompt(negative, "negative_prompt", limits)
    spec = GenerationSpec(width=width, height=height, steps=steps, guidance_scale=scale)
    return spec, [Item(prompt, negative, seed + i) for i in range(n)]
