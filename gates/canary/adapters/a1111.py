"""AUTOMATIC1111 web UI API: ``POST /sdapi/v1/txt2img``.

Only fields every A1111-compatible server knows are sent (no sampler or hires options), so the
same canary runs against A1111, SD.Next, Forge and the reference server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gates.canary.adapters.base import BadPayloadError, ImageRequest, decode_b64_image
from gates.canary.prompts import Prompt

__all__ = ["A1111Txt2Img"]


@dataclass(frozen=True)
class A1111Txt2Img:
    """Adapter for AUTOMATIC1111's ``txt2img``."""

    name: str = "a1111"

    def request(self, prompt: Prompt, seed: int) -> ImageRequest:
        """``{"prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", ...}``."""
        return ImageRequest("/sdapi/v1/txt2img", {
            "prompt": prompt.prompt,
            "negative_prompt": prompt.negative_prompt,
            "seed": seed,
            "steps": prompt.steps,
            "cfg_scale": prompt.guidance,
            "width": prompt.width,
            "height": prompt.height,
            "batch_size": prompt.batch,
        })

    def images(self, body: bytes) -> list[bytes]:
        """``images[i]`` of the response (base64 PNGs)."""
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise BadPayloadError(f"response is not JSON: {e}") from e
        images = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(images, list) or not images:
            raise BadPayloadError("response has no 'images' list")
        return [decode_b64_image(v, f"images[{i}]") for i, v in enumerate(images)]
