"""Output check: the PNG decoder against Pillow, hashes, signature distance, and the gate."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from gates.canary.output_check import (
    SIGNATURE_GRID,
    ImageFingerprint,
    OutputCheck,
    OutputCheckSpec,
    UnsupportedImageError,
    decode_png,
    digest,
    fingerprint,
    needs_pixels,
    signature_distance,
)
from gates.verdict import Verdict

_CTYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> PNG colour type


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(img: NDArray[np.uint8], filters: list[int], level: int = 6) -> bytes:
    """Encode with a chosen filter per row (an encoder independent of the decoder's code)."""
    h, w, c = img.shape
    x = img.astype(np.int32).reshape(h, w * c)
    left = np.zeros_like(x)
    left[:, c:] = x[:, :-c]
    up = np.zeros_like(x)
    up[1:] = x[:-1]
    ul = np.zeros_like(x)
    ul[1:, c:] = x[:-1, :-c]
    p = left + up - ul
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - ul)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
    preds = [np.zeros_like(x), left, up, (left + up) // 2, paeth]
    rows = b"".join(bytes([f]) + ((x[r] - preds[f][r]) & 0xFF).astype(np.uint8).tobytes()
                    for r, f in enumerate(filters))
    head = struct.pack(">IIBBBBB", w, h, 8, _CTYPE[c], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", head)
            + _chunk(b"IDAT", zlib.compress(rows, level)) + _chunk(b"IEND", b""))


def _image(h: int, w: int, c: int, seed: int = 0) -> NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(h), np.arange(w))[..., None] * 3
    return ((ramp + rng.integers(0, 40, size=(h, w, c))) % 256).astype(np.uint8)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_every_row_filter_decodes_like_pillow(channels: int) -> None:
    img = _image(23, 17, channels, seed=channels)
    filters = [r % 5 for r in range(23)]
    data = encode_png(img, filters)
    np.testing.assert_array_equal(decode_png(data), img)
    ref = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(decode_png(data), ref.reshape(img.shape))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_pillow_encoded_images_decode_exactly(mode: str) -> None:
    rgb = _image(40, 33, 3, seed=7)
    im = Image.fromarray(rgb)
    if mode == "P":
        im = im.convert("P")
    elif mode == "I;16":
        im = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    elif mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    expected = np.asarray(im.convert("RGB") if mode == "P" else im)
    got = decode_png(buf.getvalue())
    np.testing.assert_array_equal(got, expected.reshape(got.shape))


def test_pixel_hash_ignores_the_encoding_and_is_only_computed_on_demand() -> None:
    img = _image(32, 32, 3)
    a_png, b_png = encode_png(img, [0] * 32, level=1), encode_png(img, [4] * 32, level=9)
    cheap_a, cheap_b = digest(a_png), digest(b_png)
    assert cheap_a.hash.startswith("sha256:") and cheap_a.hash != cheap_b.hash
    assert cheap_a.pixels is None and cheap_a.signature is None
    assert needs_pixels((cheap_a,), [(cheap_b,)]) and not needs_pixels((cheap_a,), [(cheap_a,)])
    a, b = fingerprint(a_png), fingerprint(b_png)
    assert a.hash == cheap_a.hash and a.pixels is not None and a.pixels == b.pixels
    chk = OutputCheck(OutputCheckSpec(mode="equal"))
    assert chk.observe(0, (a,), [(b,)]).identical == 1  # same pixels, other encoder
    img2 = img.copy()
    img2[5, 5, 0] ^= 1
    c = fingerprint(encode_png(img2, [0] * 32, level=1))
    assert c.pixels != a.pixels  # one LSB of one pixel changes the pixel hash...
    assert c.signature is not None and a.signature is not None
    assert signature_distance(a.signature, c.signature) == 0.0  # ...not the block means
    img2[:8, :8] = 255
    d = fingerprint(encode_png(img2, [0] * 32))
    assert d.signature is not None and signature_distance(a.signature, d.signature) > 0.01


def test_undecodable_payloads_keep_only_their_byte_hash() -> None:
    for data in (b"\xff\xd8\xff\xe0 not really a jpeg", b"\x89PNG\r\n\x1a\n garbage"):
        fp = fingerprint(data)
        assert fp == digest(data) and fp.pixels is None and fp.signature is None
    with pytest.raises(UnsupportedImageError):
        decode_png(b"GIF89a")


def test_signature_distance_scale() -> None:
    black = fingerprint(encode_png(np.zeros((64, 64, 3), np.uint8), [0] * 64)).signature
    white = fingerprint(encode_png(np.full((64, 64, 3), 255, np.uint8), [0] * 64)).signature
    half = np.zeros((64, 64, 3), np.uint8)
    half[:, 32:] = 255
    halfsig = fingerprint(encode_png(half, [1] * 64)).signature
    small = fingerprint(encode_png(np.zeros((8, 8, 3), np.uint8), [0] * 8)).signature
    assert black and white and halfsig and small
    assert signature_distance(black, black) == 0.0
    assert signature_distance(black, white) == pytest.approx(1.0)
    assert signature_distance(black, halfsig) == pytest.approx(0.5)
    assert signature_distance(black, small) == 1.0  # other size
    assert len(bytes.fromhex(small.partition(":")[2])) == SIGNATURE_GRID**2


def _fp(value: int, hash_: str | None = None) -> tuple[ImageFingerprint, ...]:
    img = np.full((16, 16, 3), value, np.uint8)
    fp = fingerprint(encode_png(img, [0] * 16))
    return (ImageFingerprint(hash_ or fp.hash, fp.pixels, fp.signature),)


def test_check_modes() -> None:
    same, near, far = _fp(100), _fp(101), _fp(200)
    for mode, expect in (("report", Verdict.FAIL), ("equal", Verdict.FAIL),
                         ("distance", Verdict.PASS)):
        chk = OutputCheck(OutputCheckSpec(mode=mode, max_distance=0.01))
        assert chk.result.verdict is Verdict.NODATA
        assert chk.observe(0, same, [same]).verdict is Verdict.PASS
        r = chk.observe(1, same, [near])
        assert r.verdict is expect, mode
        assert r.compared == 2 and r.identical == 1
        assert r.worst_distance == pytest.approx(1 / 255)
        assert r.gating is (mode != "report")
    chk = OutputCheck(OutputCheckSpec(mode="distance", max_distance=0.01))
    r = chk.observe(7, same, [same, far])  # K = 2: any blue that differs counts
    assert r.verdict is Verdict.FAIL and r.first_mismatch == 7


def test_distance_mode_counts_undecodable_differences_as_mismatches() -> None:
    a = (ImageFingerprint("sha256:aa"),)
    b = (ImageFingerprint("sha256:bb"),)
    chk = OutputCheck(OutputCheckSpec(mode="distance"))
    r = chk.observe(0, a, [a])
    assert r.verdict is Verdict.PASS  # identical bytes need no decoding
    r = chk.observe(1, a, [b])
    assert r.verdict is Verdict.FAIL and r.undecidable == 1
