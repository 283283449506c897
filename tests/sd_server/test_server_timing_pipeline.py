"""The SD server's pipeline and its Server-Timing: encoding off the inference thread, the
header on every image answer, and the header through the canary's records into the report.

The batcher tests drive the real :class:`~sd_server.batching.Batcher` with its real threads and
a stand-in pipeline (events, not sleeps, order what must overlap); the end-to-end tests run two
real ``sd-server --model tiny`` processes, one per encoding path.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from sd_server.batching import Batcher, Encode, JobResult, Render, ServerClosingError
from sd_server.config import BatchingConfig, FaultConfig
from sd_server.engine import GenerationSpec, Item, encode_png
from sd_server.faults import FaultInjector
from sd_server.metrics import Metrics
from sdserver_harness import Server, start_server

from gates.canary.exchange import parse_server_timing
from gates.canary.prompts import Prompt
from gates.canary.runner import CanaryConfig, run_canary_sync
from gates.error_rate import ErrorRateGateSpec
from rollout.report import load_records, render_report
from rollout.report.series import timing_split

PHASES = {"queue", "inference", "encode", "total"}
WAIT_S = 60.0  # only ever reached when the behaviour under test is broken


def batcher(encode_workers: int, render: Render, encode: Encode) -> Batcher:
    cfg = BatchingConfig(max_batch=1, max_wait_s=0.0, queue_size=8,
                         encode_workers=encode_workers)
    return Batcher(render, encode, cfg, Metrics(), FaultInjector(FaultConfig()))


def spec_items(seed: int) -> tuple[GenerationSpec, list[Item]]:
    return GenerationSpec(8, 8, 1, 1.0), [Item("p", None, seed)]


def pixels_of(spec: GenerationSpec | None, items: Sequence[Item]) -> list[np.ndarray]:
    return [np.full((8, 8, 3), it.seed % 256, dtype=np.uint8) for it in items]


async def two_requests(b: Batcher) -> list[JobResult | BaseException]:
    """Two requests that cannot share a batch (``max_batch`` 1), seeds 1 and 2."""
    b.start()
    try:
        return await asyncio.gather(*(b.submit(*spec_items(s)) for s in (1, 2)),
                                    return_exceptions=True)
    finally:
        await b.close()


def results(outcomes: list[JobResult | BaseException]) -> list[JobResult]:
    assert all(isinstance(o, JobResult) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, JobResult)]


def test_next_batch_renders_while_the_last_is_encoded_off_the_inference_thread() -> None:
    """Encoding the first request blocks until the second batch's pipeline call has begun:
    only an encoder off the inference thread can see that happen."""
    second_rendering = threading.Event()
    render_threads: list[str] = []

    def render(spec: GenerationSpec, items: Sequence[Item]) -> list[np.ndarray]:
        render_threads.append(threading.current_thread().name)
        if items[0].seed == 2:
            second_rendering.set()
        return pixels_of(spec, items)

    def encode(pixels: np.ndarray) -> bytes:
        if pixels[0, 0, 0] == 1:
            assert second_rendering.wait(WAIT_S), "the next batch did not start during encoding"
        return encode_png(pixels)

    first, second = results(asyncio.run(two_requests(batcher(2, render, encode))))
    assert set(render_threads) == {render_threads[0]} and render_threads[0].startswith("sd-infer")
    for result, seed in ((first, 1), (second, 2)):
        assert result.encode_thread.startswith("sd-encode")
        assert result.images == [encode_png(pixels_of(None, spec_items(seed)[1])[0])]
        assert result.encode_s >= 0 and result.inference_s >= 0


def test_zero_workers_encode_on_the_inference_thread_with_the_same_bytes() -> None:
    pooled = results(asyncio.run(two_requests(batcher(2, pixels_of, encode_png))))
    inline = results(asyncio.run(two_requests(batcher(0, pixels_of, encode_png))))
    assert [r.encode_thread[:9] for r in inline] == ["sd-infer_"] * 2
    assert [r.images for r in inline] == [r.images for r in pooled]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_encoder_error_fails_only_its_request(workers: int) -> None:
    def encode(pixels: np.ndarray) -> bytes:
        if pixels[0, 0, 0] == 1:
            raise ValueError("cannot encode")
        return encode_png(pixels)

    first, second = asyncio.run(two_requests(batcher(workers, pixels_of, encode)))
    assert isinstance(first, ValueError) and str(first) == "cannot encode"
    assert not isinstance(second, BaseException)


def test_close_fails_a_request_still_being_encoded_and_stops_the_pool() -> None:
    encoding, release = threading.Event(), threading.Event()

    def encode(pixels: np.ndarray) -> bytes:
        encoding.set()
        release.wait(WAIT_S)
        return b"png"

    async def scenario() -> JobResult | BaseException:
        b = batcher(1, pixels_of, encode)
        b.start()
        job = asyncio.ensure_future(b.submit(*spec_items(1)))
        assert await asyncio.to_thread(encoding.wait, WAIT_S)
        await b.close()
        try:
            return await job
        except BaseException as e:
            return e
        finally:
            release.set()

    assert isinstance(asyncio.run(scenario()), ServerClosingError)


# -- the real server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Blue encodes on the inference thread (``--encode-workers 0``), green in the pool."""
    out: dict[str, Server] = {}
    try:
        for name, workers in (("blue", "0"), ("green", "2")):
            log = tmp_path_factory.mktemp(name) / "server.log"
            out[name] = start_server(["--encode-workers", workers, "--max-wait-ms", "0"], log)
        yield out
    finally:
        for s in out.values():
            s.stop()


def test_every_image_answer_carries_server_timing_and_both_paths_agree(
        servers: dict[str, Server]) -> None:
    answers = {}
    for name, server in servers.items():
        with server.client() as c:
            answers[name] = [
                c.post("/v1/images/generations", json={"prompt": "a red bicycle", "seed": 3,
                                                         "size": "64x64", "steps": 2}),
                c.post("/sdapi/v1/txt2img", json={"prompt": "a red bicycle", "seed": 3,
                                                  "steps": 2, "width": 64, "height": 64})]
    for name, (openai, a1111) in answers.items():
        for r in (openai, a1111):
            assert r.status_code == 200, r.text
            timing = parse_server_timing(r.headers.get("server-timing"))
            assert timing is not None and set(timing) == PHASES, r.headers
            body = r.json()["timings"]
            assert timing["encode"] == pytest.approx(body["encode_s"], abs=1e-5)
            assert timing["inference"] == pytest.approx(body["inference_s"], abs=1e-5)
        assert openai.json()["data"][0]["b64_json"] == a1111.json()["images"][0], name
    blue, green = (base64.b64decode(answers[n][0].json()["data"][0]["b64_json"])
                   for n in ("blue", "green"))
    assert blue == green  # the encoding path changes where bytes are made, not which


def test_server_timing_goes_through_the_canary_records_into_the_report(
        servers: dict[str, Server], tmp_path: Path) -> None:
    prompts = tuple(Prompt(id=f"p{i}", prompt=f"a red bicycle {i}", seed=i, width=64, height=64,
                           steps=2) for i in range(2))
    cfg = CanaryConfig(blue_url=servers["blue"].url, green_url=servers["green"].url,
                       prompts=prompts, warmup_requests=1, max_requests=6, concurrency=2,
                       deadline_s=120.0, error_gate=ErrorRateGateSpec(max_rate=0.5))
    run_canary_sync(cfg, records_dir=tmp_path)
    data = load_records(tmp_path)
    rows = data.canaries[0].rows
    judged = [r for r in rows if r["ok"]]
    assert judged and all(set(r["server_timing"]) == PHASES for r in judged)
    for arm in ("blue", "green"):
        split = timing_split(rows, arm)
        assert split is not None and split.timed == split.judged > 0
        assert 0 < split.server[0] <= split.client[0]  # the client waits at least that long
    page = render_report(data)
    assert "Client vs server latency" in page and "overhead P50 ms" in page
