"""The real server on the fast path: images, reproducibility, errors, auth, overload, metrics."""

from __future__ import annotations

import base64
import json
import threading

import httpx
import pytest
from sdserver_harness import TOKEN, Server, metric, png_size

from gates.capability.snapshot import CapabilitySnapshot

OPENAI = "/v1/images/generations"
A1111 = "/sdapi/v1/txt2img"


def _gen(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post(OPENAI, json={"prompt": "a red bicycle", **body})


def test_same_seed_gives_byte_identical_png_of_requested_size(main_server: Server) -> None:
    with main_server.client(TOKEN) as c:
        first = _gen(c, seed=42, size="80x64", steps=3)
        second = _gen(c, seed=42, size="80x64", steps=3)
    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    a, b = first.json()["data"][0], second.json()["data"][0]
    assert a["seed"] == b["seed"] == 42
    assert base64.b64decode(a["b64_json"]) == base64.b64decode(b["b64_json"])
    assert png_size(a["b64_json"]) == (80, 64)


def test_different_seeds_and_prompts_differ(main_server: Server) -> None:
    with main_server.client(TOKEN) as c:
        base = _gen(c, seed=1).json()["data"][0]["b64_json"]
        other_seed = _gen(c, seed=2).json()["data"][0]["b64_json"]
        other_prompt = c.post(OPENAI, json={"prompt": "a blue boat", "seed": 1}).json()
    assert base != other_seed
    assert base != other_prompt["data"][0]["b64_json"]


def test_a1111_and_openai_give_the_same_image_for_the_same_request(main_server: Server) -> None:
    with main_server.client(TOKEN) as c:
        a1111 = c.post(A1111, json={"prompt": "a red bicycle", "seed": 9, "steps": 3,
                                    "cfg_scale": 5, "width": 64, "height": 64})
        openai = _gen(c, seed=9, steps=3, guidance_scale=5, size="64x64")
    assert a1111.status_code == 200, a1111.text
    body = a1111.json()
    assert body["parameters"]["seed"] == 9
    assert json.loads(body["info"])["all_seeds"] == [9]
    assert openai.json()["data"][0]["b64_json"] == body["images"][0]


def test_n_images_get_consecutive_seeds(main_server: Server) -> None:
    with main_server.client(TOKEN) as c:
        r = c.post(A1111, json={"prompt": "a red bicycle", "seed": 9, "batch_size": 3})
        drawn = _gen(c).json()["data"][0]["seed"]
    body = r.json()
    assert json.loads(body["info"])["all_seeds"] == [9, 10, 11]
    assert len(set(body["images"])) == 3
    assert isinstance(drawn, int)  # no seed given: the server draws one and says which


def test_timings_in_body_and_server_timing_header(main_server: Server) -> None:
    with main_server.client(TOKEN) as c:
        r = _gen(c, seed=5)
    t = r.json()["timings"]
    assert 0 <= t["queue_s"] <= t["total_s"] and 0 < t["inference_s"] <= t["total_s"]
    header = r.headers["server-timing"]
    assert {p.split(";")[0].strip() for p in header.split(",")} == {"queue", "inference", "encode",
                                                                  "total"}


def test_capabilities_report_cpu_fast_path_and_snapshot(main_server: Server) -> None:
    caps = httpx.get(main_server.url + "/capabilities").json()
    CapabilitySnapshot.model_validate(caps["snapshot"])  # the document the controller reads
    pipe = caps["pipeline"]
    assert pipe["device"] == "cpu"
    for name in ("unet", "vae", "text_encoder"):
        module = pipe["modules"][name]
        assert module["device"] == "cpu" and module["dtype"] == "torch.float32"
        assert module["attention"] == "sdpa"
    assert pipe["modules"]["unet"]["attention_impl"] == ["AttnProcessor2_0"]
    assert pipe["ort"] is None
    assert caps["degraded"] is False and caps["violations"] == []
    assert caps["fault_injection"]["active"] is False
    assert caps["self_test"]["reproducible"] is True


def test_metrics_count_requests_images_and_latency(main_server: Server) -> None:
    before = httpx.get(main_server.url + "/metrics").text
    with main_server.client(TOKEN) as c:
        assert _gen(c, seed=11, n=2).status_code == 200
        assert _gen(c, seed=12).status_code == 200
    after = httpx.get(main_server.url + "/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("sd_requests_total", endpoint="openai", code="200") == 2
    assert delta("sd_images_total") == 3
    assert delta("sd_request_duration_seconds_count") == 2
    assert delta("sd_batch_size_images_sum") == 3
    assert metric(after, "sd_ready") == 1 and metric(after, "sd_degraded") == 0
    assert metric(after, "sd_fault_injection_active") == 0
    # 10% buckets: two neighbours around 1 s are 1.1x apart, fine enough for a 30% P95 change.
    assert 'sd_request_duration_seconds_bucket{le="1.1"}' in after
    assert 'sd_request_duration_seconds_bucket{le="1.21"}' in after


@pytest.mark.parametrize(
    ("body", "status", "param", "phrase"),
    [
        ({"prompt": "x", "size": "60x64"}, 400, "width", "multiple of 8"),
        ({"prompt": "x", "size": "2048x64"}, 400, "width", "multiple of 8 in [64, 1024]"),
        ({"prompt": "x", "size": "big"}, 400, "size", "512x512"),
        ({"prompt": "x", "steps": 0}, 400, "steps", "[1, 100]"),
        ({"prompt": "x", "n": 9}, 400, "n", "[1, 8]"),
        ({"prompt": "x", "n": "2"}, 400, "n", "valid integer"),
        ({"prompt": "x" * 2001}, 400, "prompt", "limit is 2000"),
        ({"prompt": "x", "guidance_scale": 99}, 400, "guidance_scale", "[0, 30"),
        ({"prompt": "x", "quality": "hd"}, 400, "quality", "unknown field"),
        ({"prompt": "x", "response_format": "url"}, 400, "response_format", "b64_json"),
        ({"n": 1}, 400, "prompt", "required"),
    ],
)
def test_bad_requests_get_4xx_with_reason(main_server: Server, body: dict[str, object],
                                          status: int, param: str, phrase: str) -> None:
    with main_server.client(TOKEN) as c:
        r = c.post(OPENAI, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and phrase in err["message"], err
    assert err["type"] == "validation"


def test_malformed_bodies_are_rejected(main_server: Server) -> None:
    with main_server.client(TOKEN) as c:
        not_json = c.post(OPENAI, content=b"{nope", headers={"content-type": "application/json"})
        form = c.post(OPENAI, data={"prompt": "x"})
        huge = c.post(OPENAI, json={"prompt": "x", "negative_prompt": "y" * 70_000})
        a1111_extra = c.post(A1111, json={"prompt": "x", "sampler_name": "Euler a"})
        wrong_method = c.get(OPENAI)
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]["message"]
    assert form.status_code == 415
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "body_too_large"
    assert a1111_extra.status_code == 400
    assert a1111_extra.json()["error"]["param"] == "sampler_name"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["message"] == "Method Not Allowed"


def test_auth_rejects_missing_and_wrong_token(main_server: Server) -> None:
    before = metric(httpx.get(main_server.url + "/metrics").text, "sd_errors_total", kind="auth")
    with main_server.client() as anonymous, main_server.client("wrong-token") as wrong:
        missing = anonymous.post(OPENAI, json={"prompt": "x"})
        bad = wrong.post(OPENAI, json={"prompt": "x"})
        probes = [anonymous.get(p).status_code for p in ("/healthz", "/readyz", "/metrics")]
    assert missing.status_code == 401 and "missing" in missing.json()["error"]["message"]
    assert bad.status_code == 401 and "invalid" in bad.json()["error"]["message"]
    assert bad.headers["www-authenticate"].startswith("Bearer")
    assert probes == [200, 200, 200]
    after = metric(httpx.get(main_server.url + "/metrics").text, "sd_errors_total", kind="auth")
    assert after - before == 2


def _wait_metric(server: Server, name: str, value: float, timeout_s: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if metric(httpx.get(server.url + "/metrics").text, name) == value:
            return
        time.sleep(0.02)
    pytest.fail(f"{name} never reached {value}")


def test_full_queue_gets_429_with_retry_after_and_queued_requests_batch(
        main_server: Server) -> None:
    """One slow request runs; two compatible ones fill the queue (size 2); the next gets 429.

    The two queued requests then run as one batch of two: dynamic batching, for real.
    """
    results: dict[str, httpx.Response] = {}

    def send(key: str, **body: object) -> None:
        with main_server.client(TOKEN) as c:
            results[key] = _gen(c, **body)

    slow = threading.Thread(target=send, args=("slow",),
                            kwargs={"seed": 1, "size": "256x256", "steps": 20})
    slow.start()
    _wait_metric(main_server, "sd_in_flight_requests", 1)
    queued = [threading.Thread(target=send, args=(f"q{i}",), kwargs={"seed": 20 + i})
              for i in range(2)]
    for t in queued:
        t.start()
    _wait_metric(main_server, "sd_queue_depth", 2)
    with main_server.client(TOKEN) as c:
        rejected = _gen(c, seed=99)
    for t in (slow, *queued):
        t.join(timeout=120)
    assert results["slow"].status_code == 200, results["slow"].text
    assert rejected.status_code == 429, rejected.text
    assert int(rejected.headers["retry-after"]) >= 1
    assert rejected.json()["error"]["type"] == "queue_full"
    for key in ("q0", "q1"):
        assert results[key].status_code == 200, results[key].text
        assert results[key].headers["x-batch-images"] == "2"
        assert results[key].json()["timings"]["queue_s"] > 0
    text = httpx.get(main_server.url + "/metrics").text
    assert metric(text, "sd_errors_total", kind="queue_full") >= 1
    assert metric(text, "sd_batch_size_images_bucket", le="2.0") > metric(
        text, "sd_batch_size_images_bucket", le="1.0")


def test_a_client_that_leaves_takes_its_queued_job_with_it(main_server: Server) -> None:
    """Two requests queue behind a slow one and their clients time out: their jobs are dropped
    before the GPU sees them (one batch runs, not three) and counted as 499 client_closed."""
    def batches() -> float:
        return metric(httpx.get(main_server.url + "/metrics").text, "sd_batch_size_images_count")

    def closed() -> float:
        return metric(httpx.get(main_server.url + "/metrics").text, "sd_requests_total",
                      endpoint="openai", code="499")

    before_batches, before_closed = batches(), closed()
    results: dict[str, httpx.Response | Exception] = {}

    def send(key: str, timeout: float, **body: object) -> None:
        try:
            with httpx.Client(base_url=main_server.url, timeout=timeout,
                              headers={"Authorization": f"Bearer {TOKEN}"}) as c:
                results[key] = _gen(c, **body)
        except httpx.TimeoutException as e:
            results[key] = e

    slow = threading.Thread(target=send, args=("slow", 120),
                            kwargs={"seed": 3, "size": "512x512", "steps": 20})
    slow.start()
    _wait_metric(main_server, "sd_in_flight_requests", 1)
    leavers = [threading.Thread(target=send, args=(f"q{i}", 0.3), kwargs={"seed": 40 + i})
               for i in range(2)]
    for t in leavers:
        t.start()
    for t in leavers:
        t.join(timeout=30)
    assert all(isinstance(results[f"q{i}"], httpx.TimeoutException) for i in range(2))
    slow.join(timeout=120)
    answer = results["slow"]
    assert isinstance(answer, httpx.Response) and answer.status_code == 200
    _wait_metric(main_server, "sd_queue_depth", 0)
    _wait_metric(main_server, "sd_in_flight_requests", 0)
    assert closed() - before_closed == 2
    assert batches() - before_batches == 1  # only the slow request's batch ran
