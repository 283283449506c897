"""Execution paths change for real and say so; fault injection announces itself."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
from sdserver_harness import TOKEN, Server, metric

OPENAI = "/v1/images/generations"


def _modules(server: Server) -> dict[str, dict[str, object]]:
    modules: dict[str, dict[str, object]] = httpx.get(
        server.url + "/capabilities").json()["pipeline"]["modules"]
    return modules


def test_math_attention_and_dtype_change_every_module(main_server: Server,
                                                      generic_server: Server) -> None:
    fast, generic = _modules(main_server), _modules(generic_server)
    for name in ("unet", "vae", "text_encoder"):
        assert fast[name]["attention"] == "sdpa", fast[name]
        assert generic[name]["attention"] == "math", generic[name]
        assert fast[name]["dtype"] == "torch.float32"
        assert generic[name]["dtype"] == "torch.bfloat16"
    # The kernels behind the labels: diffusers' generic processor, transformers' eager path.
    assert generic["unet"]["attention_impl"] == generic["vae"]["attention_impl"] == [
        "AttnProcessor"]
    assert generic["text_encoder"]["attention_impl"] == ["eager"]
    assert fast["text_encoder"]["attention_impl"] == ["sdpa"]


def test_other_path_other_bits(main_server: Server, generic_server: Server) -> None:
    """Same prompt and seed on two paths: the arithmetic differs, so the PNG does too."""
    body = {"prompt": "a lighthouse", "seed": 3}
    with main_server.client(TOKEN) as c:
        fast = c.post(OPENAI, json=body).json()["data"][0]["b64_json"]
    with generic_server.client() as c:
        for _ in range(10):  # fault injection fails about half of the requests
            r = c.post(OPENAI, json=body)
            if r.status_code == 200:
                break
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["b64_json"] != fast


def test_fault_injection_is_marked_and_counted(generic_server: Server) -> None:
    caps = httpx.get(generic_server.url + "/capabilities").json()
    faults = caps["fault_injection"]
    assert faults["active"] is True
    assert faults["error_rate"] == 0.5 and faults["latency_s"] == 0.06
    before = httpx.get(generic_server.url + "/metrics").text
    with generic_server.client() as c:
        answers = [c.post(OPENAI, json={"prompt": "x", "seed": i}) for i in range(8)]
    after = httpx.get(generic_server.url + "/metrics").text
    failed = [r for r in answers if r.status_code == 500]
    served = [r for r in answers if r.status_code == 200]
    assert failed and served and len(failed) + len(served) == 8
    assert all(r.json()["error"]["type"] == "injected" for r in failed)
    # The added latency is part of what the client sees as inference.
    assert all(r.json()["timings"]["inference_s"] >= 0.06 for r in served)
    injected = (metric(after, "sd_errors_total", kind="injected")
                - metric(before, "sd_errors_total", kind="injected"))
    assert injected == len(failed)
    assert metric(after, "sd_fault_injection_active") == 1
    assert metric(after, "sd_fault_injection_setting", setting="error_rate") == 0.5


def _pixels(b64: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.int16)


def test_ort_unet_draws_the_torch_unets_picture(ort_server: Server, main_server: Server) -> None:
    """The exported graph really runs the same UNet: same seed, same image to within 1/255."""
    body = {"prompt": "a lighthouse at dusk", "seed": 77}
    with ort_server.client() as c:
        via_ort = c.post("/v1/images/generations", json=body)
    with main_server.client(TOKEN) as c:
        via_torch = c.post("/v1/images/generations", json=body)
    assert via_ort.status_code == 200, via_ort.text
    a = _pixels(via_ort.json()["data"][0]["b64_json"])
    b = _pixels(via_torch.json()["data"][0]["b64_json"])
    assert a.shape == b.shape == (64, 64, 3)
    assert int(np.abs(a - b).max()) <= 1
    assert a.std() > 1  # a real picture, not a constant
