"""OpenAI images API: ``POST /v1/images/generations`` with ``response_format: b64_json``.

Seed, steps, guidance and negative prompt are not in OpenAI's own API; SD servers that speak it
(the reference server, LocalAI, vLLM-omni and others) accept them as extra fields. A server
that rejects unknown fields answers 4xx, which the canary reports as errors instead of silently
drawing something else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gates.canary.adapters.base import BadPayloadError, ImageRequest, decode_b64_image
from gates.canary.prompts import Prompt

__all__ = ["OpenAIImages"]


@dataclass(frozen=True)
class OpenAIImages:
    """Adapter for the OpenAI images API (``model`` is sent only when given)."""

    model: str | None = None
    name: str = "openai"

    def request(self, prompt: Prompt, seed: int) -> ImageRequest:
        """``{"prompt", "n", "size": "WxH", "response_format": "b64_json", "seed", ...}``."""
        body: dict[str, object] = {
            "prompt": prompt.prompt,
            "n": prompt.batch,
            "size": f"{prompt.width}x{prompt.height}",
            "response_format": "b64_json",
            "seed": seed,
            "steps": prompt.steps,
            "guidance_scale": prompt.guidance,
        }
        if prompt.negative_prompt:
            body["negative_prompt"] = prompt.negative_prompt
        if self.model is not None:
            body["model"] = self.model
        return ImageRequest("/v1/images/generations", body)

    def images(self, body: bytes) -> list[bytes]:
        """``data[i].b64_json`` of the response."""
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise BadPayloadError(f"response is not JSON: {e}") from e
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list) or not data:
            raise BadPayloadError("response has no 'data' list of images")
        return [decode_b64_image(d.get("b64_json") if isinstance(d, dict) else None,
                                 f"data[{i}].b64_json") for i, d in enumerate(data)]
