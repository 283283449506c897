"""How layers stack (OCI whiteouts, opaque directories, replacements) and what counts as waste."""

from __future__ import annotations

from pathlib import Path

from images import Entry, ImageSpec, LayerSpec, write_forms

from gates.image.layers import walk
from gates.image.reader import open_image


def _walk(tmp_path: Path, *layers: tuple[Entry, ...]) -> dict[str, int]:
    spec = ImageSpec([LayerSpec(entries, f"step {i}") for i, entries in enumerate(layers)])
    ref = write_forms(spec, tmp_path, "w")["oci"]
    with open_image(ref) as image:
        result = walk(image)
    walk_sizes = {p: e.size for p, e in result.entries.items() if e.kind != "d"}
    walk_sizes["<wasted>"] = result.wasted_bytes
    walk_sizes["<removable>"] = result.unpacked_size - result.final_size
    return walk_sizes


def test_whiteout_of_a_directory_removes_everything_below(tmp_path: Path) -> None:
    got = _walk(tmp_path,
                (Entry("opt/app/a", b"1" * 10), Entry("opt/app/sub/b", b"2" * 20),
                 Entry("opt/apps", b"3")),
                (Entry("opt/.wh.app"),))
    assert got == {"opt/apps": 1, "<wasted>": 30, "<removable>": 30}


def test_whiteout_does_not_hide_its_own_layer(tmp_path: Path) -> None:
    got = _walk(tmp_path,
                (Entry("etc/x", b"old"),),
                (Entry("etc/x", b"new!"), Entry("etc/.wh.x"), Entry("etc/y/.wh..wh..opq"),
                 Entry("etc/y/kept", b"k")))
    assert got == {"etc/x": 4, "etc/y/kept": 1, "<wasted>": 7, "<removable>": 3}


def test_opaque_directory_hides_lower_entries_only(tmp_path: Path) -> None:
    got = _walk(tmp_path,
                (Entry("var/cache/a", b"a" * 100), Entry("var/keep", b"k")),
                (Entry("var/cache/.wh..wh..opq"), Entry("var/cache/b", b"b" * 5)))
    assert got == {"var/keep": 1, "var/cache/b": 5, "<wasted>": 100, "<removable>": 100}


def test_file_and_directory_replacing_each_other(tmp_path: Path) -> None:
    got = _walk(tmp_path,
                (Entry("srv/data/big", b"x" * 50), Entry("srv/conf", b"c" * 7)),
                (Entry("srv/data", b"now a file"), Entry("srv/conf", kind="dir", mode=0o755),
                 Entry("srv/conf/a", b"a")))
    assert got == {"srv/data": 10, "srv/conf/a": 1, "<wasted>": 57, "<removable>": 57}


def test_symlinks_and_hardlinks_weigh_nothing(tmp_path: Path) -> None:
    got = _walk(tmp_path, (Entry("usr/bin/python3.11", b"p" * 9),
                           Entry("usr/bin/python3", kind="symlink", link="python3.11"),
                           Entry("usr/bin/py", kind="hardlink", link="usr/bin/python3.11")))
    assert got == {"usr/bin/python3.11": 9, "usr/bin/python3": 0, "usr/bin/py": 0,
                   "<wasted>": 0, "<removable>": 0}


def test_many_small_files_stream_quickly(tmp_path: Path) -> None:
    import time

    entries = tuple(Entry(f"usr/lib/m{i // 100}/f{i}.py", b"# x\n" * 50) for i in range(20_000))
    t0 = time.perf_counter()
    got = _walk(tmp_path, entries)
    assert len(got) == 20_002
    assert time.perf_counter() - t0 < 30  # ~1 s here; tarfile's r|gz took minutes (quadratic)
