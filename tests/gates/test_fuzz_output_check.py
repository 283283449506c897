"""The output check's validity rules, and fuzzed image payloads.

Validity is judged against blue's answer to the same request: a green image is broken when
blue's decodes and green's does not, when the counts or sizes differ, or when green's is blank
and blue's is not; a different picture of the same shape is a similarity question only, gated
in equal/distance modes. Mutated and random payloads never raise and are never "valid" where
blue's image is.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from faulty_peer import gradient_png, png_bomb
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gates.canary.output_check import OutputCheck, OutputCheckSpec, fingerprint
from gates.verdict import Verdict

GOOD = gradient_png(32, 0)
OTHER = gradient_png(32, 90)  # another picture, same size: a model change


def _png(img: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="PNG")
    return out.getvalue()


def _check(green: list[bytes], blue: list[bytes], mode: str = "valid") -> OutputCheck:
    chk = OutputCheck(OutputCheckSpec.model_validate({"mode": mode}))
    chk.observe(0, tuple(map(fingerprint, green)), [tuple(map(fingerprint, blue))])
    return chk


@pytest.mark.parametrize(("green", "why"), [
    ([b"GIF89a" + bytes(40)], "not a usable image: not a PNG"),
    ([GOOD[:len(GOOD) // 2]], "not a usable image: corrupt or truncated PNG"),
    ([png_bomb()], "not a usable image: PNG of 20000x20000"),
    ([GOOD, GOOD], "green drew 2 images, blue 1"),
    ([gradient_png(64, 0)], "is 64x64 pixels, blue's 32x32"),
    ([_png(np.zeros((32, 32, 3), np.uint8))], "blank or near-constant"),
    ([_png(np.full((32, 32), 128, np.uint8))], "blank or near-constant"),
])
def test_broken_green_images_fail_in_every_gating_mode(green: list[bytes], why: str) -> None:
    for mode in ("valid", "equal", "distance"):
        r = _check(green, [GOOD], mode).result
        assert r.verdict is Verdict.FAIL and r.gating and r.broken == 1, (mode, r.reason)
        assert r.first_broken == 0 and r.broken_reason is not None and why in r.broken_reason
        assert why in r.reason
    report = _check(green, [GOOD], "report").result
    assert not report.gating and report.broken == 1  # the opt-out still says it


def test_a_changed_model_is_valid_but_not_equal() -> None:
    assert _check([OTHER], [GOOD]).result.verdict is Verdict.PASS
    r = _check([OTHER], [GOOD], "equal").result
    assert r.verdict is Verdict.FAIL and r.broken == 0 and r.mismatches == 1
    assert "similarity reported, not gated" in _check([OTHER], [GOOD]).result.reason


@pytest.mark.parametrize("blue", [[b"GIF89a" + bytes(40)], [_png(np.zeros((32, 32), np.uint8))]])
def test_green_is_never_blamed_for_what_blue_does_too(blue: list[bytes]) -> None:
    """A format this check does not decode, or a prompt that draws black, on both arms."""
    green = [b"GIF89a" + bytes(41)] if blue[0].startswith(b"GIF") else \
        [_png(np.full((32, 32), 1, np.uint8))]
    r = _check(green, blue).result
    assert r.broken == 0 and r.verdict is Verdict.PASS


def test_green_must_be_worse_than_every_blue_request() -> None:
    chk = OutputCheck()
    bad = (fingerprint(b"junk"),)
    assert chk.observe(0, bad, [(fingerprint(b"junk2"),), (fingerprint(GOOD),)]).broken == 0
    assert chk.observe(1, bad, [(fingerprint(GOOD),), (fingerprint(OTHER),)]).broken == 1


def test_nothing_judged_keeps_the_default_check_out_of_the_verdict() -> None:
    r = OutputCheck().result
    assert r.verdict is Verdict.NODATA and not r.gating
    assert OutputCheck(OutputCheckSpec(mode="equal")).result.gating


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=8),
       st.integers(0, len(GOOD)))
def test_mutated_pngs_never_raise_and_never_pass_as_other_pictures(
        flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(GOOD[:cut] if cut else GOOD)
    for at, value in flips:
        if at < len(data):
            data[at] = value
    fp = fingerprint(bytes(data))
    assert (fp.signature is None) == (fp.error is not None)
    chk = OutputCheck()
    r = chk.observe(0, (fp,), [(fingerprint(GOOD),)])
    if fp.signature is None:
        assert r.verdict is Verdict.FAIL  # undecodable where blue's decodes
    else:
        assert r.verdict in (Verdict.PASS, Verdict.FAIL)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_are_never_a_valid_image(junk: bytes) -> None:
    fp = fingerprint(b"\x89PNG\r\n\x1a\n" + junk)
    r = OutputCheck().observe(0, (fp,), [(fingerprint(GOOD),)])
    assert fp.signature is not None or r.verdict is Verdict.FAIL
