"""Output check: the PNG decoder against Pillow, hashes, signature distance, the gate, and
untrusted payloads (decompression bombs, lying headers, truncated PNGs) in bounded memory."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from gates.canary.adapters.base import BadPayloadError, decode_b64_image
from gates.canary.output_check import (
    MAX_DECODED_BYTES,
    MAX_IMAGE_PIXELS,
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
        assert fp.error in ("not a PNG", "truncated PNG or no IHDR chunk first")
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



# -- untrusted payloads ----------------------------------------------------------------------

_MIB = 1 << 20


def deflated_zeros(n: int) -> bytes:
    """A valid zlib stream of ``n`` zero bytes, built in a few ms per GiB: after a full flush
    the compressor forgets its history, so every further MiB of zeros gives the same block."""
    full, rest = divmod(n, _MIB)
    c = zlib.compressobj(9)
    head = c.compress(bytes(_MIB)) + c.flush(zlib.Z_FULL_FLUSH) if full else b""
    block = c.compress(bytes(_MIB)) + c.flush(zlib.Z_FULL_FLUSH) if full > 1 else b""
    tail = c.compress(bytes(rest)) + c.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(full):
        adler = zlib.adler32(bytes(_MIB), adler)
    adler = zlib.adler32(bytes(rest), adler)
    return head + block * (full - 1) + tail + b"\x03\x00" + struct.pack(">I", adler)  # end


def raw_png(w: int, h: int, depth: int, ctype: int, idat: bytes) -> bytes:
    """A PNG with the given header and image data, whatever they say."""
    head = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", head) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def zero_png(w: int, h: int, depth: int = 8, ctype: int = 0, inflated: int | None = None,
             ) -> bytes:
    """An all-black PNG; ``inflated`` makes its image data inflate to that many bytes instead
    of the ``h * (1 + row bytes)`` its header implies (a lying header)."""
    row = 1 + (w * {0: 1, 2: 3, 4: 2, 6: 4}[ctype] * depth + 7) // 8
    return raw_png(w, h, depth, ctype, deflated_zeros(h * row if inflated is None else inflated))


def test_deflated_zeros_is_a_valid_zlib_stream() -> None:
    for n in (0, 5, _MIB, 3 * _MIB + 7):
        assert zlib.decompress(deflated_zeros(n)) == bytes(n)


# Runs fingerprint() on each file named in argv under an address-space limit of the child's
# current size + 1 GiB, and reports the result with the growth of its peak resident memory.
_BOUNDED_CHILD = """
import json, resource, sys
from gates.canary.output_check import fingerprint
payloads = [open(p, "rb").read() for p in sys.argv[1:]]
vm = next(int(line.split()[1]) for line in open("/proc/self/status")
          if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = []
for data in payloads:
    fp = fingerprint(data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.append({"error": fp.error, "pixels": fp.pixels, "growth_mib": (peak - base) / 1024})
print(json.dumps(out))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and RLIMIT_AS")
def test_png_bombs_are_decoded_in_bounded_memory(tmp_path: Path) -> None:
    bomb = zero_png(20000, 20000)  # 400 MB of 8-bit grey: 381 MiB decoded, 12 GiB as float
    liar = zero_png(512, 512, ctype=2, inflated=1 << 30)  # says 512 x 512, inflates to 1 GiB
    assert len(bomb) < _MIB and len(liar) < 2 * _MIB  # tiny on the wire
    files = []
    for name, data in (("bomb", bomb), ("liar", liar)):
        files.append(tmp_path / f"{name}.png")
        files[-1].write_bytes(data)
    run = subprocess.run([sys.executable, "-c", _BOUNDED_CHILD, *map(str, files)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    got_bomb, got_liar = json.loads(run.stdout)
    assert got_bomb["pixels"] is None
    assert "20000x20000" in got_bomb["error"] and "exceeds the decoding bound" in got_bomb["error"]
    # The lying header: only the 512 x 512 pixels it declares are ever inflated (Pillow fills
    # a buffer of the declared size and stops), so it reads as the honest black image.
    assert got_liar["pixels"] == fingerprint(zero_png(512, 512, ctype=2)).pixels
    for got in (got_bomb, got_liar):
        assert got["growth_mib"] < 300, got


def test_bounds_are_checked_on_the_header_before_anything_is_inflated() -> None:
    not_zlib = b"no zlib stream: never inflated"
    side = 4096
    assert side * side == MAX_IMAGE_PIXELS
    cases = {
        (side + 1, side, 8, 0): "PNG of 4097x4096 pixels (8-bit grey, 16 MiB decoded) exceeds",
        (2897, 2897, 16, 6): "PNG of 2897x2897 pixels (16-bit RGBA, 64 MiB decoded) exceeds",
        (65536, 65536, 1, 0): "PNG of 65536x65536 pixels (1-bit grey, 4096 MiB decoded) exceeds",
    }
    rgba16 = 2897 * 2897
    assert rgba16 < MAX_IMAGE_PIXELS and rgba16 * 8 > MAX_DECODED_BYTES  # bytes bound only
    for (w, h, depth, ctype), message in cases.items():
        with pytest.raises(UnsupportedImageError, match=r"exceeds the decoding bound") as e:
            decode_png(raw_png(w, h, depth, ctype, not_zlib))
        assert str(e.value).startswith(message)
    fp = fingerprint(raw_png(side + 1, side, 8, 0, not_zlib))
    assert fp.pixels is None and fp.error is not None and "4097x4096" in fp.error
    # Within the bounds, the same garbage is read, and found corrupt.
    assert "corrupt or truncated PNG (64x64)" in str(fingerprint(raw_png(64, 64, 8, 0, not_zlib))
                                                     .error)
    # Exactly at the pixel bound: decoded.
    at_bound = fingerprint(zero_png(side, side))
    assert at_bound.error is None and at_bound.signature == f"{side}x{side}:" + "00" * 256
    # The requested size, when the caller knows it.
    png = encode_png(_image(48, 64, 3), [0] * 48)
    assert fingerprint(png, max_size=(64, 48)).pixels == fingerprint(png).pixels
    with pytest.raises(UnsupportedImageError, match="64x48 pixels is larger than the requested "
                                                    "32x48"):
        decode_png(png, max_size=(32, 48))
    # Invalid headers: colour type, bit depth, zero size.
    for w, h, depth, ctype in ((8, 8, 8, 5), (8, 8, 4, 2), (0, 8, 8, 0), (8, 8, 8, 0)):
        bad = raw_png(w, h, depth, ctype, not_zlib)
        if (w, h, depth, ctype) == (8, 8, 8, 0):
            bad = bad[:16] + b"IHDX" + bad[20:]  # IHDR not the first chunk
        assert fingerprint(bad).error is not None


def test_truncated_and_corrupt_pngs_are_classified_not_raised() -> None:
    buf = io.BytesIO()
    Image.fromarray(_image(64, 64, 3)).save(buf, format="PNG")
    png = buf.getvalue()
    assert fingerprint(png).pixels is not None
    flipped = bytearray(png)
    flipped[60] ^= 0xFF  # inside the image data
    crc = bytearray(png)
    crc[29] ^= 0xFF  # the header's checksum
    payloads = [png[:cut] for cut in (0, 7, 8, 20, 33, 41, 100, len(png) // 2)]
    payloads += [bytes(flipped), bytes(crc), b"GIF89a", b"{\"not\": \"an image\"}"]
    for data in payloads:
        fp = fingerprint(data)  # never raises
        assert fp.hash == digest(data).hash and fp.pixels is None and fp.signature is None
        assert fp.error, data[:50]
        assert "0x" not in fp.error  # no object address in a reason
        with pytest.raises(UnsupportedImageError):
            decode_png(data)
    assert "image file is truncated" in str(fingerprint(png[:len(png) // 2]).error)


def test_garbage_base64_is_a_bad_payload_before_any_image_check() -> None:
    for value in ("%%%", "", None, "data:image/png;base64,@@@@"):
        with pytest.raises(BadPayloadError):
            decode_b64_image(value, "data[0].b64_json")


def test_a_green_sending_a_bomb_fails_a_gating_check_with_the_reason() -> None:
    bomb = fingerprint(zero_png(20000, 20000))
    normal = fingerprint(encode_png(_image(32, 32, 3), [0] * 32))
    assert needs_pixels((digest(zero_png(20000, 20000)),), [(digest(b"other"),)])
    for mode in ("report", "equal", "distance"):
        chk = OutputCheck(OutputCheckSpec(mode=mode))
        r = chk.observe(3, (bomb,), [(normal,)])
        assert r.verdict is Verdict.FAIL and r.undecidable == 1 and r.first_mismatch == 3, mode
        assert r.undecodable is not None and r.undecodable.startswith("green image 0: PNG of "
                                                                      "20000x20000 pixels")
        assert r.undecodable in r.reason
    chk = OutputCheck(OutputCheckSpec(mode="distance"))
    r = chk.observe(0, (normal,), [(normal,), (bomb,)])
    assert r.verdict is Verdict.FAIL and r.undecodable is not None
    assert r.undecodable.startswith("blue 1 image 0: PNG of 20000x20000")
    assert chk.observe(1, (bomb,), [(bomb,)]).mismatches == 1  # same bytes: nothing decoded
