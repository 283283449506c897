"""Output check: do both arms draw the same image for the same prompt and seed?

Why: a green that is fast because it silently runs a different model, a lower precision or
fewer steps is not a healthy release. Every slice sends one prompt and seed to all arms, so the
images can be compared at no extra cost.

Three measures, computed without heavy dependencies (``zlib`` and numpy only), the costly ones
only when needed:

*Image hash* ``sha256:<hex>`` of the encoded image, always (microseconds). Equal hashes on both
arms settle the slice: identical images, nothing is decoded.

*Pixel hash* ``px:<sha256>`` of the decoded pixels (shape, sample depth and samples), computed
only for slices whose image hashes differ, so two encoders that write the same pixels with
different compression still match. Decoding a 512 px PNG costs tens of milliseconds of CPU; a
slice of identical images costs none. Payloads this decoder cannot read (JPEG, WebP, interlaced
or sub-byte PNGs) have no pixel hash. Equal pixels mean same model, same engine, same numerics.

*Image distance* between signatures ``WxH:<hex>`` (computed with the pixel hash): the image's
luminance (``0.299 R + 0.587 G + 0.114 B``, alpha ignored, 16-bit samples scaled to 8 bits)
averaged over a 16 x 16 grid of blocks. The distance is the mean absolute difference of the 256
block means divided by 255, in ``[0, 1]``: 0 for identical images (and for differences below
the rounding of a block mean), 1.0 when the sizes differ. Small numeric differences (another GPU
kernel, fp16 vs bf16) move it by a fraction of a percent; another model or another seed moves
whole regions and typically gives 0.05-0.3. The bound is the policy's choice (``maxDistance``,
default 0.02).

Modes (``OutputCheckSpec.mode``): ``report`` compares and reports but never gates (the default:
a rollout that changes the model legitimately changes the images), ``equal`` fails on any slice
whose hashes differ, ``distance`` fails on any slice whose distance exceeds ``maxDistance``.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from gates.verdict import Verdict

__all__ = [
    "SIGNATURE_GRID",
    "ImageFingerprint",
    "OutputCheck",
    "OutputCheckResult",
    "OutputCheckSpec",
    "UnsupportedImageError",
    "decode_png",
    "digest",
    "fingerprint",
    "needs_pixels",
    "signature_distance",
]

#: Blocks per side of the luminance signature.
SIGNATURE_GRID = 16
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


class UnsupportedImageError(ValueError):
    """The payload is not a PNG this decoder reads (the byte hash is used instead)."""


class OutputCheckSpec(BaseModel):
    """How green's images must relate to blue's for the same prompt and seed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                              frozen=True)

    mode: Literal["report", "equal", "distance"] = Field("report", description=(
        "report: compare, never gate; equal: identical pixels required; distance: signature "
        "distance at most maxDistance."))
    max_distance: float = Field(0.02, ge=0, le=1, description=(
        "Largest mean block-luminance difference (fraction of full scale) in distance mode."))


@dataclass(frozen=True)
class ImageFingerprint:
    """What the check keeps of one image: always its hash; its pixel hash and signature once
    decoded (``None`` before, or when the payload is not a PNG this decoder reads)."""

    hash: str
    pixels: str | None = None
    signature: str | None = None


def digest(data: bytes) -> ImageFingerprint:
    """The cheap fingerprint: the hash of the encoded bytes only."""
    return ImageFingerprint(f"sha256:{hashlib.sha256(data).hexdigest()}")


def fingerprint(data: bytes) -> ImageFingerprint:
    """The full fingerprint: hash, and pixel hash and signature when the PNG decodes."""
    cheap = digest(data)
    try:
        pixels = decode_png(data)
    except UnsupportedImageError:
        return cheap
    h, w, c = pixels.shape
    head = f"{w}x{h}x{c}x{pixels.dtype.itemsize * 8}:".encode()
    px = hashlib.sha256(head + pixels.astype(pixels.dtype.newbyteorder(">")).tobytes())
    return ImageFingerprint(cheap.hash, f"px:{px.hexdigest()}", _signature(pixels))


def needs_pixels(green: Sequence[ImageFingerprint],
                 blues: Sequence[Sequence[ImageFingerprint]]) -> bool:
    """Whether a slice's encoded images differ, so pixels must be decoded to compare them."""
    return any(_hashes(b) != _hashes(green) for b in blues)


def signature_distance(a: str, b: str) -> float:
    """Mean absolute block-luminance difference of two signatures, in ``[0, 1]``.

    Raises:
        ValueError: a malformed signature.
    """
    size_a, _, hex_a = a.partition(":")
    size_b, _, hex_b = b.partition(":")
    if size_a != size_b:
        return 1.0
    va = np.frombuffer(bytes.fromhex(hex_a), dtype=np.uint8).astype(np.float64)
    vb = np.frombuffer(bytes.fromhex(hex_b), dtype=np.uint8).astype(np.float64)
    if va.size != SIGNATURE_GRID**2 or vb.size != va.size:
        raise ValueError(f"signatures must hold {SIGNATURE_GRID**2} bytes")
    return float(np.mean(np.abs(va - vb)) / 255.0)


def decode_png(data: bytes) -> NDArray[np.uint8] | NDArray[np.uint16]:
    """Decode a non-interlaced 8- or 16-bit PNG to an ``(height, width, samples)`` array.

    Palette images are expanded to RGB. Enough for what SD servers send (8-bit RGB/RGBA from
    PIL or OpenCV) without a dependency on an imaging library.

    Raises:
        UnsupportedImageError: not a PNG, corrupt, interlaced, or a bit depth below 8.
    """
    if not data.startswith(_PNG_MAGIC):
        raise UnsupportedImageError("not a PNG")
    header, palette, idat = _read_chunks(data)
    try:
        w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", header)
    except struct.error as e:
        raise UnsupportedImageError("bad IHDR chunk") from e
    if ctype not in _CHANNELS or depth not in (8, 16) or (ctype == 3 and depth != 8) \
            or interlace != 0 or w == 0 or h == 0:
        raise UnsupportedImageError(f"unsupported PNG (colour type {ctype}, depth {depth}, "
                                    f"interlace {interlace})")
    bpp = _CHANNELS[ctype] * depth // 8
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise UnsupportedImageError(f"corrupt image data: {e}") from e
    if len(raw) != h * (1 + w * bpp):
        raise UnsupportedImageError("image data length does not match the header")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, 1 + w * bpp)
    if int(rows[:, 0].max()) > 4:
        raise UnsupportedImageError("unknown PNG row filter")
    px = _unfilter(rows[:, 0], rows[:, 1:].reshape(h, w, bpp))
    if ctype == 3:
        if palette is None or len(palette) % 3:
            raise UnsupportedImageError("palette image without a valid PLTE chunk")
        lut = np.frombuffer(palette, dtype=np.uint8).reshape(-1, 3)
        if int(px.max()) >= lut.shape[0]:
            raise UnsupportedImageError("palette index out of range")
        return lut[px[..., 0]]
    if depth == 16:
        return px.reshape(h, w, -1, 2).view(">u2")[..., 0].astype(np.uint16)
    return px


def _read_chunks(data: bytes) -> tuple[bytes, bytes | None, list[bytes]]:
    pos, header, palette, idat = len(_PNG_MAGIC), b"", None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise UnsupportedImageError("truncated PNG chunk")
        if kind == b"IHDR":
            header = body
        elif kind == b"PLTE":
            palette = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if not header or not idat:
        raise UnsupportedImageError("PNG without IHDR or IDAT")
    return header, palette, idat


def _unfilter(kinds: NDArray[np.uint8], filtered: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth) on whole anti-diagonals.

    Each pixel depends on its left, upper and upper-left neighbours, so every pixel of an
    anti-diagonal ``row + col = d`` can be reconstructed at once: ``h + w - 1`` vectorised steps
    instead of ``h * w`` Python ones (about 60 ms for 512 x 512 RGB).
    """
    h, w, bpp = filtered.shape
    if not kinds.any():
        return filtered.copy()
    out = np.zeros((h + 1, w + 1, bpp), dtype=np.int32)  # zero row/column: PNG's "outside"
    x = filtered.astype(np.int32)
    kind = kinds.astype(np.int32)
    for d in range(h + w - 1):
        r = np.arange(max(0, d - w + 1), min(h - 1, d) + 1)
        c = d - r
        a, b, ul = out[r + 1, c], out[r, c + 1], out[r, c]
        p = a + b - ul
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, ul))
        t = kind[r][:, None]
        pred = np.where(t == 1, a, np.where(t == 2, b, np.where(t == 3, (a + b) >> 1,
                                                                    np.where(t == 4, paeth, 0))))
        out[r + 1, c + 1] = (x[r, c] + pred) & 0xFF
    return out[1:, 1:].astype(np.uint8)


def _signature(pixels: NDArray[np.uint8] | NDArray[np.uint16]) -> str:
    """``WxH:<hex>`` of the 16 x 16 block-mean luminance (see the module docstring)."""
    h, w, c = pixels.shape
    v = pixels.astype(np.float64) / (257.0 if pixels.dtype == np.uint16 else 1.0)
    lum = v[..., 0] if c < 3 else v[..., 0] * 0.299 + v[..., 1] * 0.587 + v[..., 2] * 0.114
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = lum.cumsum(0).cumsum(1)
    r0, r1 = _block_edges(h)
    c0, c1 = _block_edges(w)
    sums = (integral[np.ix_(r1, c1)] - integral[np.ix_(r0, c1)] - integral[np.ix_(r1, c0)]
            + integral[np.ix_(r0, c0)])
    means = sums / np.outer(r1 - r0, c1 - c0)
    return f"{w}x{h}:{np.clip(np.rint(means), 0, 255).astype(np.uint8).tobytes().hex()}"


def _block_edges(n: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Start and end of each of the grid's blocks along a side of ``n`` pixels (>= 1 each)."""
    start = np.arange(SIGNATURE_GRID) * n // SIGNATURE_GRID
    end = np.maximum(np.arange(1, SIGNATURE_GRID + 1) * n // SIGNATURE_GRID, start + 1)
    return start, end


@dataclass(frozen=True)
class OutputCheckResult:
    """Outcome of the output check so far.

    Attributes:
        verdict: ``fail`` once a slice breaks the rule, ``pass`` while none did, ``nodata``
            before any slice could be compared. In ``report`` mode the verdict is what
            ``equal`` would give, for information only.
        mode: the spec's mode; ``gating`` says whether the verdict counts.
        compared: slices whose images were compared.
        identical: those with identical image hashes on every arm.
        mismatches: slices that broke the rule (``equal`` in report mode).
        undecidable: slices whose distance could not be computed (differing payloads this
            decoder cannot read).
        worst_distance: the largest signature distance seen (NaN before any).
        first_mismatch: the first slice that broke the rule.
        reason: one human sentence.
    """

    verdict: Verdict
    mode: str
    compared: int
    identical: int
    mismatches: int
    undecidable: int
    worst_distance: float
    first_mismatch: int | None
    reason: str

    @property
    def gating(self) -> bool:
        """Whether this check's verdict takes part in the canary's verdict."""
        return self.mode != "report"


class OutputCheck:
    """Streaming output check: one call per slice with each arm's image fingerprints."""

    def __init__(self, spec: OutputCheckSpec | None = None) -> None:
        self.spec = spec if spec is not None else OutputCheckSpec()
        self._compared = self._identical = self._mismatches = self._undecidable = 0
        self._worst = math.nan
        self._first: int | None = None
        self._result = self._summarise()

    @property
    def result(self) -> OutputCheckResult:
        """The check's state after the slices observed so far."""
        return self._result

    def observe(self, slice_no: int, green: Sequence[ImageFingerprint],
                blues: Sequence[Sequence[ImageFingerprint]]) -> OutputCheckResult:
        """Compare green's images of one slice with each blue request's images."""
        if not blues:
            return self._result
        self._compared += 1
        same = all(_same(green, b) for b in blues)
        self._identical += same
        dist = 0.0 if same else max(_distance(green, b) for b in blues)
        if math.isnan(dist):
            self._undecidable += 1
        else:
            self._worst = dist if math.isnan(self._worst) else max(self._worst, dist)
        broken = (not same) if self.spec.mode != "distance" else \
            (math.isnan(dist) or dist > self.spec.max_distance)
        if broken:
            self._mismatches += 1
            if self._first is None:
                self._first = slice_no
        self._result = self._summarise()
        return self._result

    def _summarise(self) -> OutputCheckResult:
        s = self.spec
        if self._compared == 0:
            verdict, reason = Verdict.NODATA, "no slice with images on both arms yet"
        else:
            verdict = Verdict.FAIL if self._mismatches else Verdict.PASS
            worst = "-" if math.isnan(self._worst) else f"{self._worst:.4f}"
            reason = (f"{self._identical} of {self._compared} slices identical, worst "
                      f"distance {worst}")
            if s.mode == "distance":
                reason += f" (bound {s.max_distance:g})"
            if self._undecidable:
                reason += f", {self._undecidable} undecidable (image not decodable)"
            if self._first is not None:
                reason += f"; first mismatch in slice {self._first}"
            if s.mode == "report":
                reason += " (report only)"
        return OutputCheckResult(
            verdict=verdict, mode=s.mode, compared=self._compared, identical=self._identical,
            mismatches=self._mismatches, undecidable=self._undecidable,
            worst_distance=self._worst, first_mismatch=self._first, reason=reason)


def _hashes(images: Sequence[ImageFingerprint]) -> list[str]:
    return [i.hash for i in images]


def _same(a: Sequence[ImageFingerprint], b: Sequence[ImageFingerprint]) -> bool:
    """Identical images: equal encodings, or equal decoded pixels."""
    return len(a) == len(b) and all(
        x.hash == y.hash or (x.pixels is not None and x.pixels == y.pixels)
        for x, y in zip(a, b, strict=True))


def _distance(a: Sequence[ImageFingerprint], b: Sequence[ImageFingerprint]) -> float:
    """Largest per-image signature distance (1.0 if the counts differ, NaN if undecodable)."""
    if len(a) != len(b):
        return 1.0
    out = 0.0
    for x, y in zip(a, b, strict=True):
        if _same((x,), (y,)):
            continue
        if x.signature is None or y.signature is None:
            return math.nan
        out = max(out, signature_distance(x.signature, y.signature))
    return out
