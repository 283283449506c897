"""Output check: do both arms draw the same image for the same prompt and seed?

Why: a green that is fast because it silently runs a different model, a lower precision or
fewer steps is not a healthy release. Every slice sends one prompt and seed to all arms, so the
images can be compared at no extra cost.

Three measures, the costly ones only when needed:

*Image hash* ``sha256:<hex>`` of the encoded image, always (microseconds). Equal hashes on both
arms settle the slice: identical images, nothing is decoded.

*Pixel hash* ``px:<sha256>`` of the decoded pixels (shape, sample depth and samples), computed
only for slices whose image hashes differ, so two encoders that write the same pixels with
different compression still match. PNGs are decoded with Pillow (a few milliseconds for a
512 px PNG); palette images are expanded to RGB, 16-bit grey keeps 16 bits, 16-bit colour is
read at 8 bits per sample (Pillow's reading). Other formats (JPEG, WebP, ...) are not decoded
and have no pixel hash. Equal pixels mean same model, same engine, same numerics.

*Image distance* between signatures ``WxH:<hex>`` (computed with the pixel hash): the image's
luminance (``0.299 R + 0.587 G + 0.114 B``, alpha ignored, 16-bit samples scaled to 8 bits)
averaged over a 16 x 16 grid of blocks. The distance is the mean absolute difference of the 256
block means divided by 255, in ``[0, 1]``: 0 for identical images (and for differences below
the rounding of a block mean), 1.0 when the sizes differ. Small numeric differences (another GPU
kernel, fp16 vs bf16) move it by a fraction of a percent; another model or another seed moves
whole regions and typically gives 0.05-0.3. The bound is the policy's choice (``maxDistance``,
default 0.02).

Image payloads are untrusted input: a PNG of a few hundred kilobytes can declare 20000 x 20000
pixels (a decompression bomb). Before anything is decoded, the PNG header (IHDR) is read and the
image is refused when it exceeds :data:`MAX_IMAGE_PIXELS` pixels or :data:`MAX_DECODED_BYTES`
of samples, or the size the caller requested (``max_size``). Pillow then decodes into a buffer
of the declared size only, so image data that inflates to more than the header says (a lying
header) is never inflated beyond it. Decoding one image therefore needs at most a few times
``MAX_DECODED_BYTES`` of memory, and the signature is computed band by band (a sixteenth of the
image at a time). A refused, truncated or corrupt payload keeps its image hash and records why
it has no pixel hash (:attr:`ImageFingerprint.error`); a slice it leaves undecidable names that
reason in :attr:`OutputCheckResult.reason`.

Two kinds of rule, because a rollout may legitimately change the model:

*Validity* (is green's answer a usable image at all?) is judged against blue's answer to the same
request, never against a fixed expectation: a green image is **broken** when blue's image at
the same position decodes and green's does not (not a PNG, truncated, corrupt, a decompression
bomb: :attr:`ImageFingerprint.error`), when green drew another number of images than blue, when
its size differs from blue's, or when it is blank or near-constant (every block mean of the
signature within :data:`FLAT_RANGE` levels: the fp16 VAE NaN failure draws black) while blue's
is not. A different model draws other images of the same size, count and validity, so validity
holds whatever the model; relative to blue it also never blames green for what blue does too
(a prompt that draws black on both arms, a server answering in a format this check does not
decode). A green that is worse than every blue request of the slice breaks validity.

*Similarity* (is it the same picture?) is the hash or the distance above, and gates only when
the policy says the model must not change.

Modes (``OutputCheckSpec.mode``): ``valid`` (the default) fails on any broken green image and
reports similarity without gating on it; ``equal`` fails on broken images and on any slice
whose images are not identical; ``distance`` fails on broken images and on any slice whose
distance exceeds ``maxDistance``; ``report`` is the opt-out: compares and reports, never gates
(its verdict, for information, is what ``equal`` would give).
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from gates.verdict import Verdict

__all__ = [
    "FLAT_RANGE",
    "MAX_DECODED_BYTES",
    "MAX_IMAGE_PIXELS",
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
#: Largest spread of a signature's block means (8-bit levels) of a blank or near-constant image.
FLAT_RANGE = 2
#: Largest image decoded, in pixels (4096 x 4096; SD draws 512-2048 px).
MAX_IMAGE_PIXELS = 4096 * 4096
#: Largest image decoded, in bytes of samples (palette images count as RGB).
MAX_DECODED_BYTES = 64 * 2**20
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> (name, samples per decoded pixel, allowed bit depths)
_COLOUR_TYPES = {0: ("grey", 1, (1, 2, 4, 8, 16)), 2: ("RGB", 3, (8, 16)),
                 3: ("palette", 3, (1, 2, 4, 8)), 4: ("grey+alpha", 2, (8, 16)),
                 6: ("RGBA", 4, (8, 16))}


class UnsupportedImageError(ValueError):
    """The payload is not a PNG this check decodes (the byte hash is used instead): another
    format, a corrupt or truncated PNG, or one larger than the decoding bounds."""


class OutputCheckSpec(BaseModel):
    """How green's images must relate to blue's for the same prompt and seed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                              frozen=True)

    mode: Literal["valid", "report", "equal", "distance"] = Field("valid", description=(
        "valid: fail on broken green images (undecodable, wrong size or count, blank where "
        "blue's is not), report similarity; equal: valid and identical pixels; distance: "
        "valid and signature distance at most maxDistance; report: never gate (opt-out)."))
    max_distance: float = Field(0.02, ge=0, le=1, description=(
        "Largest mean block-luminance difference (fraction of full scale) in distance mode."))


@dataclass(frozen=True)
class ImageFingerprint:
    """What the check keeps of one image: always its hash; its pixel hash and signature once
    decoded (``None`` before, or when the payload is not a PNG this check decodes, in which
    case ``error`` says why)."""

    hash: str
    pixels: str | None = None
    signature: str | None = None
    error: str | None = field(default=None, compare=False)  # a diagnostic, not an identity


def digest(data: bytes) -> ImageFingerprint:
    """The cheap fingerprint: the hash of the encoded bytes only."""
    return ImageFingerprint(f"sha256:{hashlib.sha256(data).hexdigest()}")


def fingerprint(data: bytes, *, max_size: tuple[int, int] | None = None) -> ImageFingerprint:
    """The full fingerprint: hash, and pixel hash and signature when the PNG decodes.

    Never raises for a bad payload: an image that cannot or may not be decoded (see
    :func:`decode_png`; ``max_size`` is passed on) keeps its hash, with the reason in ``error``.
    """
    cheap = digest(data)
    try:
        pixels = decode_png(data, max_size=max_size)
    except UnsupportedImageError as e:
        return ImageFingerprint(cheap.hash, error=str(e))
    h, w, c = pixels.shape
    px = hashlib.sha256(f"{w}x{h}x{c}x{pixels.dtype.itemsize * 8}:".encode())
    px.update(np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder(">")).data)
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


def decode_png(data: bytes, *, max_size: tuple[int, int] | None = None,
               ) -> NDArray[np.uint8] | NDArray[np.uint16]:
    """Decode a PNG to an ``(height, width, samples)`` array, with bounded memory.

    The header is checked first (module docstring): nothing is inflated for an image larger
    than :data:`MAX_IMAGE_PIXELS`, :data:`MAX_DECODED_BYTES` or ``max_size`` (width, height).
    Palette images are expanded to RGB; 16-bit grey gives ``uint16`` samples, everything else
    ``uint8``.

    Raises:
        UnsupportedImageError: not a PNG, an invalid header, too large, truncated or corrupt.
    """
    w, h = _checked_header(data, max_size)
    try:
        with Image.open(io.BytesIO(data), formats=("PNG",)) as img:
            if img.size != (w, h):
                raise UnsupportedImageError(f"PNG header says {w}x{h}, Pillow read {img.size}")
            img.load()  # decodes into a buffer of the header's size: no more is inflated
            if img.mode in ("1", "P"):
                rgb = img.convert("L" if img.mode == "1" else "RGB")
                pixels = np.asarray(rgb)
                rgb.close()
            else:
                pixels = np.asarray(img)
    except (UnsupportedImageError, MemoryError):
        raise
    except Exception as e:  # what Pillow raises on corrupt input varies: OSError, SyntaxError,
        # ValueError, EOFError, struct.error, zlib.error... All mean "cannot decode this".
        why = ("Pillow cannot read it" if isinstance(e, UnidentifiedImageError)  # names the
               else f"{type(e).__name__}: {e}")  # BytesIO object: no address in a reason
        raise UnsupportedImageError(f"corrupt or truncated PNG ({w}x{h}): {why}") from e
    if pixels.dtype == np.uint8:
        return pixels.reshape(h, w, -1)
    if img.mode.startswith("I"):  # 16-bit grey ("I;16", or "I" on older Pillow)
        return pixels.astype(np.uint16, copy=False).reshape(h, w, 1)
    raise UnsupportedImageError(f"unsupported PNG pixel mode {img.mode}")


def _checked_header(data: bytes, max_size: tuple[int, int] | None) -> tuple[int, int]:
    """Width and height from the IHDR chunk (the first, by the PNG specification), once they
    are known to be valid and within the bounds."""
    if not data.startswith(_PNG_MAGIC):
        raise UnsupportedImageError("not a PNG")
    ihdr = data[len(_PNG_MAGIC):len(_PNG_MAGIC) + 21]
    if len(ihdr) < 21 or ihdr[:8] != b"\x00\x00\x00\x0dIHDR":
        raise UnsupportedImageError("truncated PNG or no IHDR chunk first")
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", ihdr[8:])
    name, samples, depths = _COLOUR_TYPES.get(ctype, ("?", 0, ()))
    if depth not in depths or w == 0 or h == 0 or interlace > 1:
        raise UnsupportedImageError(f"invalid PNG header ({w}x{h}, colour type {ctype}, "
                                    f"depth {depth}, interlace {interlace})")
    decoded = w * h * samples * (2 if depth == 16 else 1)
    if w * h > MAX_IMAGE_PIXELS or decoded > MAX_DECODED_BYTES:
        raise UnsupportedImageError(
            f"PNG of {w}x{h} pixels ({depth}-bit {name}, {decoded / 2**20:.0f} MiB decoded) "
            f"exceeds the decoding bound of {MAX_IMAGE_PIXELS} pixels and "
            f"{MAX_DECODED_BYTES >> 20} MiB: not decoded")
    if max_size is not None and (w > max_size[0] or h > max_size[1]):
        raise UnsupportedImageError(f"PNG of {w}x{h} pixels is larger than the requested "
                                    f"{max_size[0]}x{max_size[1]}: not decoded")
    return w, h


def _signature(pixels: NDArray[np.uint8] | NDArray[np.uint16]) -> str:
    """``WxH:<hex>`` of the 16 x 16 block-mean luminance (see the module docstring).

    Exact integer sums per channel, one band of block rows at a time: the memory needed is a
    few arrays of the image's width, whatever its height.
    """
    h, w, c = pixels.shape
    weights = np.array([0.299, 0.587, 0.114] if c >= 3 else [1.0])
    weights /= 257.0 if pixels.dtype == np.uint16 else 1.0
    r0, r1 = _block_edges(h)
    c0, c1 = _block_edges(w)
    sums = np.empty((SIGNATURE_GRID, SIGNATURE_GRID))
    prefix = np.zeros((w + 1, weights.size), dtype=np.int64)
    for i in range(SIGNATURE_GRID):
        band = pixels[r0[i]:r1[i], :, :weights.size]
        np.cumsum(band.sum(axis=0, dtype=np.int64), axis=0, out=prefix[1:])
        sums[i] = (prefix[c1] - prefix[c0]) @ weights
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
        verdict: ``fail`` once a slice breaks a rule, ``pass`` while none did, ``nodata``
            before any slice could be compared. In ``report`` mode the verdict is what
            ``equal`` would give, for information only.
        mode: the spec's mode; ``gating`` says whether the verdict counts.
        compared: slices whose images were compared.
        identical: those with identical image hashes on every arm.
        mismatches: slices that broke the similarity rule (``equal`` in report and valid
            mode).
        broken: slices where green's images are broken (module docstring: validity).
        first_broken: the first of them, and ``broken_reason`` why.
        undecidable: slices whose distance could not be computed (differing payloads this
            check does not decode).
        undecodable: why the first undecidable slice's image was not decoded (which arm,
            which image, and :attr:`ImageFingerprint.error`), ``None`` if unknown or none.
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
    undecodable: str | None = None
    broken: int = 0
    first_broken: int | None = None
    broken_reason: str | None = None

    @property
    def gating(self) -> bool:
        """Whether this check's verdict takes part in the canary's verdict: never in report
        mode; in valid mode once a slice was judged (validity can only find a broken green,
        and a green that answers no image at all is the error-rate gate's to judge)."""
        return self.mode != "report" and (self.mode != "valid" or self.compared > 0)


class OutputCheck:
    """Streaming output check: one call per slice with each arm's image fingerprints."""

    def __init__(self, spec: OutputCheckSpec | None = None) -> None:
        self.spec = spec if spec is not None else OutputCheckSpec()
        self._compared = self._identical = self._mismatches = self._undecidable = 0
        self._broken = 0
        self._worst = math.nan
        self._first: int | None = None
        self._first_broken: tuple[int, str] | None = None
        self._undecodable: str | None = None
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
        broken = [_broken(green, b) for b in blues]
        if all(broken):
            self._broken += 1
            if self._first_broken is None:
                self._first_broken = slice_no, str(broken[0])
        same = all(_same(green, b) for b in blues)
        self._identical += same
        dists = [0.0] if same else [_distance(green, b) for b in blues]
        dist = math.nan if any(map(math.isnan, dists)) else max(dists)  # max() skips a NaN
        if math.isnan(dist):
            self._undecidable += 1
            if self._undecodable is None:
                self._undecodable = _why_undecodable(green, blues)
        else:
            self._worst = dist if math.isnan(self._worst) else max(self._worst, dist)
        differs = (not same) if self.spec.mode != "distance" else \
            (math.isnan(dist) or dist > self.spec.max_distance)
        if differs:
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
            similar_gates = s.mode != "valid"  # report mode: what equal would give
            verdict = Verdict.FAIL if self._broken or (similar_gates and self._mismatches) \
                else Verdict.PASS
            worst = "-" if math.isnan(self._worst) else f"{self._worst:.4f}"
            reason = (f"{self._identical} of {self._compared} slices identical, worst "
                      f"distance {worst}")
            if s.mode == "distance":
                reason += f" (bound {s.max_distance:g})"
            if self._undecidable:
                why = f": {self._undecodable}" if self._undecodable else ""
                reason += f", {self._undecidable} undecidable (image not decodable{why})"
            if self._first is not None:
                reason += f"; first mismatch in slice {self._first}"
            if s.mode == "valid" and self._mismatches:
                reason += " (similarity reported, not gated)"
            if self._first_broken is not None:
                n, why = self._first_broken
                reason = (f"{self._broken} of {self._compared} slices with broken green "
                          f"images, first in slice {n}: {why}; {reason}")
            if s.mode == "report":
                reason += " (report only)"
        first_broken, broken_reason = self._first_broken or (None, None)
        return OutputCheckResult(
            verdict=verdict, mode=s.mode, compared=self._compared, identical=self._identical,
            mismatches=self._mismatches, undecidable=self._undecidable,
            worst_distance=self._worst, first_mismatch=self._first, reason=reason,
            undecodable=self._undecodable, broken=self._broken, first_broken=first_broken,
            broken_reason=broken_reason)


def _broken(green: Sequence[ImageFingerprint], blue: Sequence[ImageFingerprint]) -> str | None:
    """Why green's images are broken where blue's are not (module docstring), else ``None``."""
    if len(green) != len(blue):
        return f"green drew {len(green)} images, blue {len(blue)}"
    for i, (g, b) in enumerate(zip(green, blue, strict=True)):
        if _same((g,), (b,)) or b.signature is None:
            continue  # identical, or blue's own image is no reference
        if g.signature is None:
            return f"green image {i} is not a usable image: {g.error or 'not decoded'}"
        g_size, b_size = g.signature.partition(":")[0], b.signature.partition(":")[0]
        if g_size != b_size:
            return f"green image {i} is {g_size} pixels, blue's {b_size}"
        if _flat(g.signature) and not _flat(b.signature):
            return f"green image {i} is blank or near-constant, blue's is not"
    return None


def _flat(signature: str) -> bool:
    """Whether every block mean of a signature lies within :data:`FLAT_RANGE` levels."""
    means = bytes.fromhex(signature.partition(":")[2])
    return max(means) - min(means) <= FLAT_RANGE


def _hashes(images: Sequence[ImageFingerprint]) -> list[str]:
    return [i.hash for i in images]


def _why_undecodable(green: Sequence[ImageFingerprint],
                     blues: Sequence[Sequence[ImageFingerprint]]) -> str | None:
    """The first decoding error among a slice's images, naming its arm and position."""
    arms = [("green", green)] + [(f"blue {j}", b) for j, b in enumerate(blues)]
    for arm, images in arms:
        for i, image in enumerate(images):
            if image.error is not None:
                return f"{arm} image {i}: {image.error}"
    return None


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
