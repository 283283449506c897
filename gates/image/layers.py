"""Stream an image's layers into the filesystem a container would see, keeping metadata only.

Each layer blob is read once, in tar stream mode (``r|*``: gzip or plain), through a reader that
hashes it (the blob digest is verified) and reports progress. Nothing is extracted: per path the
walker keeps size, mode, owner, type and the layer that wrote it; contents are read only for
small files that must be (``var/lib/dpkg/status``, ``etc/passwd``, files of at most
:data:`KEY_SCAN_MAX` bytes scanned for private keys) and, for a diff, hashed on the fly.
Memory therefore grows with the number of paths, not with the bytes of the image.

Layers stack as the OCI image spec says: a whiteout ``.wh.NAME`` deletes ``NAME`` (and all below
it) from the lower layers, an opaque whiteout ``.wh..wh..opq`` hides every lower entry of its
directory; neither applies to entries of its own layer. Wasted bytes follow dive: every path that
more than one layer touched (written, overwritten or deleted) counts the bytes of all its
versions; ``removable_bytes`` is what the layers ship that the final filesystem does not show.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import re
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, cast

from gates.image.reader import Image, ImageError, Layer

__all__ = ["KEY_SCAN_MAX", "Entry", "KeyHit", "LayerStats", "Walk", "walk"]

#: Files at most this large are read and scanned for a PEM private-key header.
KEY_SCAN_MAX = 16 << 10
#: Files kept whole (bounded) because the audit and the diff parse them.
CAPTURED = ("var/lib/dpkg/status", "etc/passwd")
CAPTURED_DIRS = ("var/lib/dpkg/status.d/",)
CAPTURE_MAX = 8 << 20
_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_KEY_NAMES = frozenset({"id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk",
                        "id_ed25519_sk"})
_CHUNK = 1 << 20
#: tarfile's stream buffer: it copies up to this much on every read, so keep it small.
_TAR_BUFSIZE = 16 << 10
_ZSTD = b"\x28\xb5\x2f\xfd"
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")

Progress = Callable[[int, int], None]


@dataclass(slots=True)
class Entry:
    """One path of a layer: ``kind`` is f(ile), d(ir), l(symlink), h(ardlink) or o(ther)."""

    size: int
    mode: int
    uid: int
    kind: str
    layer: int
    link: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class KeyHit:
    """A private key found in a layer (it ships even if a later layer deletes it)."""

    path: str
    layer: int
    reason: str


@dataclass
class LayerStats:
    """What one layer holds: files, bytes, whiteouts and its blob's digest as read."""

    index: int
    digest: str = ""
    files: int = 0
    bytes: int = 0
    whiteouts: int = 0


@dataclass
class Walk:
    """The stacked filesystem plus what the walk found on the way."""

    entries: dict[str, Entry] = field(default_factory=dict)
    layers: list[LayerStats] = field(default_factory=list)
    captured: dict[str, bytes] = field(default_factory=dict)
    keys: list[KeyHit] = field(default_factory=list)
    versions: dict[str, list[int]] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)

    @property
    def unpacked_size(self) -> int:
        """Bytes of every file of every layer: what a runtime unpacks."""
        return sum(s.bytes for s in self.layers)

    @property
    def final_size(self) -> int:
        """Bytes of the files the container sees."""
        return sum(e.size for e in self.entries.values() if e.kind == "f")

    @property
    def wasted_bytes(self) -> int:
        """dive's count: all versions of every path touched by more than one layer."""
        return sum(v[0] for v in self.versions.values() if v[1] > 1)


class _HashingReader:
    """A read-only stream over a blob that hashes what passes and reports progress."""

    def __init__(self, raw: IO[bytes], progress: Callable[[int], None]) -> None:
        self.raw, self.progress = raw, progress
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.progress(len(data))
        return data

    def drain(self) -> str:
        while self.read(_CHUNK):
            pass
        return "sha256:" + self.hash.hexdigest()


def _decompressed(reader: _HashingReader, head: bytes) -> IO[bytes]:
    """The blob as an uncompressed tar stream.

    The modules' own readers, not tarfile's ``r|gz``: that one re-slices its whole decompressed
    buffer on every 512-byte header read, quadratic in a layer of many small files.
    """
    raw = cast(IO[bytes], reader)
    if head.startswith(b"\x1f\x8b"):
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if head.startswith(b"BZh"):
        return cast(IO[bytes], bz2.BZ2File(raw))
    if head.startswith(b"\xfd7zXZ"):
        return cast(IO[bytes], lzma.LZMAFile(raw))
    return cast(IO[bytes], _Unclosable(raw))


class _Unclosable(io.RawIOBase):
    """A plain blob, readable, left open by ``with`` (the walk drains it afterwards)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self.raw.read(n)


def _norm(name: str) -> str:
    name = name.replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _ancestors(path: str) -> list[str]:
    out = []
    i = path.rfind("/")
    while i > 0:
        path = path[:i]
        out.append(path)
        i = path.rfind("/")
    return out


def walk(image: Image, *, hash_files: bool = False, progress: Progress | None = None) -> Walk:
    """Stream every layer of ``image`` (bottom to top) into a :class:`Walk`."""
    result = Walk()
    total = sum(layer.size for layer in image.layers)
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    for layer in image.layers:
        _walk_layer(image, layer, result, hash_files, advance)
    return result


def _walk_layer(image: Image, layer: Layer, result: Walk, hash_files: bool,
                advance: Callable[[int], None]) -> None:
    stats = LayerStats(layer.index)
    entries: dict[str, Entry] = {}
    whiteouts: set[str] = set()
    opaque: set[str] = set()
    with image.open_layer(layer) as raw:
        head = raw.read(6)
    if head.startswith(_ZSTD):
        raise ImageError(f"layer {layer.index} is zstd-compressed, which Python's tarfile "
                         "cannot read; convert it with skopeo copy --dest-compress-format gzip")
    # An uncompressed blob (a docker save layer) is its own diff_id: verify it against that.
    plain = not head.startswith(_COMPRESSED_MAGIC)
    expected = layer.digest or (layer.diff_id if plain else None)
    with image.open_layer(layer) as raw:
        reader = _HashingReader(raw, advance)
        try:
            with _decompressed(reader, head) as plain_stream, tarfile.open(
                    fileobj=plain_stream, mode="r|", bufsize=_TAR_BUFSIZE) as tar:
                while (member := tar.next()) is not None:
                    _member(tar, member, layer.index, entries, whiteouts, opaque, result,
                            stats, hash_files)
                    tar.members.clear()  # type: ignore[attr-defined]  # bounded memory
        except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError, zlib.error,
                lzma.LZMAError) as e:
            raise ImageError(f"layer {layer.index} ({layer.name}): not a tar stream ({e})") from e
        stats.digest = reader.drain()
    if expected is not None and expected != stats.digest:
        raise ImageError(f"layer {layer.index}: content {stats.digest} does not match its "
                         f"digest {expected}")
    _apply(result, layer.index, entries, whiteouts, opaque)
    result.layers.append(stats)


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo, index: int,
            entries: dict[str, Entry], whiteouts: set[str], opaque: set[str], result: Walk,
            stats: LayerStats, hash_files: bool) -> None:
    path = _norm(member.name)
    if not path:
        return
    parent, _, base = path.rpartition("/")
    if base.startswith(".wh."):
        stats.whiteouts += 1
        if base == ".wh..wh..opq":
            opaque.add(parent)
        else:
            whiteouts.add(f"{parent}/{base[4:]}" if parent else base[4:])
        return
    kind = ("f" if member.isreg() else "d" if member.isdir() else "l" if member.issym()
            else "h" if member.islnk() else "o")
    entry = Entry(member.size if kind == "f" else 0, member.mode, member.uid, kind, index,
                  _norm(member.linkname) if kind in "lh" else "")
    if kind == "f":
        stats.files += 1
        stats.bytes += member.size
        _read_contents(tar, member, path, entry, result, hash_files)
    entries[path] = entry


def _read_contents(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, entry: Entry,
                   result: Walk, hash_files: bool) -> None:
    capture = path in CAPTURED or path.startswith(CAPTURED_DIRS)
    if capture:
        result.captured.pop(path, None)  # a lower layer's copy no longer counts
    small = member.size <= KEY_SCAN_MAX or (capture and member.size <= CAPTURE_MAX)
    if not (small or hash_files):
        return
    stream = tar.extractfile(member)
    if stream is None:
        return
    if small:
        data = stream.read()
        if capture:
            result.captured[path] = data
        if member.size <= KEY_SCAN_MAX:
            _scan_key(path, data, entry.layer, result)
        if hash_files:
            entry.sha256 = hashlib.sha256(data).hexdigest()
        return
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    entry.sha256 = digest.hexdigest()


def _scan_key(path: str, data: bytes, layer: int, result: Walk) -> None:
    base = path.rpartition("/")[2]
    if _KEY.search(data):
        result.keys.append(KeyHit(path, layer, "PEM private key header"))
    elif base in _KEY_NAMES:
        result.keys.append(KeyHit(path, layer, f"SSH private key file name {base}"))


def _apply(result: Walk, index: int, entries: dict[str, Entry], whiteouts: set[str],
           opaque: set[str]) -> None:
    """Stack one layer on the filesystem: its whiteouts first (lower layers only), then it.

    A non-directory written where a lower layer had a directory (explicit or implied by the
    paths below it) hides that directory's contents, as an opaque whiteout would.
    """
    state, captured, dirs = result.entries, result.captured, result.dirs
    replaced = {p for p, e in entries.items() if e.kind != "d" and p in dirs}
    if whiteouts or opaque or replaced:
        hiding = opaque | replaced
        for path in [p for p in state if _hidden(p, whiteouts, hiding)]:
            _remove(result, path)
    for path, entry in entries.items():
        old = state.get(path)
        if old is not None and old.kind != "d" and entry.kind == "d":
            _remove(result, path)  # a file replaced by a directory: that file is gone
        state[path] = entry
        if entry.kind == "d":
            dirs.add(path)
        else:
            version = result.versions.setdefault(path, [0, 0])
            version[0] += entry.size
            version[1] += 1
        for parent in _ancestors(path):
            if parent in dirs:
                break
            dirs.add(parent)
    for path in list(captured):
        if path not in state:
            del captured[path]


def _remove(result: Walk, path: str) -> None:
    entry = result.entries.pop(path)
    if entry.kind != "d":
        result.versions.setdefault(path, [0, 0])[1] += 1


def _hidden(path: str, whiteouts: set[str], opaque: set[str]) -> bool:
    if path in whiteouts:
        return True
    return any(a in whiteouts or a in opaque for a in _ancestors(path)) or (
        "" in opaque and path != "")
