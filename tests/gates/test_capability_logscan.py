"""The fallback-language scan, first on what the installed ORT and torch print right now."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gates.capability.logscan import CATALOG, compile_phrases, scan_file, scan_text

# A server's start-up as the installed onnxruntime prints it: the Python warning (default
# filter, so the real formatted line) when CUDA is requested on a CPU build, and the C++ log
# plus the exception of the same session in strict mode.
_ORT_STARTUP = textwrap.dedent(
    """
    import sys
    import onnxruntime as ort
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    blob = model.SerializeToString()
    print("server: loading unet.onnx", file=sys.stderr, flush=True)
    s = ort.InferenceSession(blob, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    print(f"server: providers {s.get_providers()}", file=sys.stderr, flush=True)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        ort.InferenceSession(blob, opts, providers=["CUDAExecutionProvider"])
    except Exception as e:
        print(f"server: strict session failed: {e}", file=sys.stderr, flush=True)
    print("server: listening on :8000", file=sys.stderr, flush=True)
    """
)


@pytest.fixture(scope="module")
def ort_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    proc = subprocess.run(
        [sys.executable, "-c", _ORT_STARTUP],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    path = tmp_path_factory.mktemp("logs") / "server.log"
    path.write_text(proc.stderr)
    return path


def _numbered(path: Path, needle: str) -> list[int]:
    lines = path.read_text().splitlines()
    return [i for i, line in enumerate(lines, start=1) if needle in line]


def test_scan_finds_what_the_installed_ort_printed(ort_log: Path) -> None:
    hits = scan_file(ort_log)
    by_line = {h.line: h for h in hits}
    warned = _numbered(ort_log, "Specified provider 'CUDAExecutionProvider' is not in available")
    native = _numbered(ort_log, "[E:onnxruntime")
    assert warned and native, ort_log.read_text()
    for line in warned:
        assert by_line[line].category == "provider-unavailable"
        assert by_line[line].phrase == "ort-provider-not-in-available"
    for line in native:
        assert by_line[line].category == "cpu-fallback" and "\x1b[" not in by_line[line].text
    for line in _numbered(ort_log, "server: listening") + _numbered(ort_log, "loading unet"):
        assert line not in by_line
    assert all(h.source == str(ort_log) for h in hits)


def test_scan_finds_what_the_installed_torch_raises() -> None:
    torch = pytest.importorskip("torch")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.zeros(1, 1, 4, 8)
    mask = torch.ones(4, 4, dtype=torch.bool)
    with (
        pytest.raises(RuntimeError) as err,
        sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION),
    ):
        torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    hits = scan_text(f"RuntimeError: {err.value}")
    assert [h.category for h in hits] == ["attention-fallback"], str(err.value)


@pytest.mark.parametrize(
    ("line", "category"),
    [
        # Texts these libraries print on GPU machines (not reproducible on this CPU box).
        (
            "2026-11-27 [W:onnxruntime:Default, onnxruntime_pybind_state.cc:1032 "
            "CreateExecutionProviderFactoryInstance] Failed to create CUDAExecutionProvider. "
            "Require cuDNN 9.* and CUDA 12.*",
            "provider-create-failed",
        ),
        (
            "[E:onnxruntime:Default, provider_bridge_ort.cc:1992 TryGetProviderInfo_CUDA] "
            "Failed to load library libonnxruntime_providers_cuda.so with error: "
            "libcublasLt.so.12: cannot open shared object file: No such file or directory",
            "provider-create-failed",
        ),
        (
            "libcudnn.so.9: cannot open shared object file: No such file or directory",
            "library-missing",
        ),
        ("EP Error: CUDA failure 100: no CUDA-capable device is detected", "cuda-unavailable"),
        ("Falling back to ['CPUExecutionProvider'] and retrying.", "cpu-fallback"),
        (
            "UserWarning: CUDA initialization: Found no NVIDIA driver on your system.",
            "cuda-unavailable",
        ),
        (
            "[TRT] [E] 1: [stdArchiveReader.cpp::StdArchiveReader::42] Error Code 1: "
            "Serialization (Serialization assertion stdVersionRead == kSERIALIZATION_VERSION "
            "failed.Version tag does not match.",
            "engine-rebuild",
        ),
        ("[TensorRT EP] Deserialize the cuda engine failed.", "engine-rebuild"),
        (
            "TensorRT EP: engine cache will be rebuilt for the new TensorRT version",
            "engine-rebuild",
        ),
        (
            "UserWarning: Memory efficient kernel not used because: (Triggered internally at "
            "sdp_utils.cpp:858.)",
            "attention-fallback",
        ),
        ("UserWarning: Flash attention kernel not used because:", "attention-fallback"),
        ("UserWarning: Torch was not compiled with flash attention.", "attention-fallback"),
        (
            "WARNING[XFORMERS]: xFormers can't load C++/CUDA extensions. xFormers was built "
            "for: PyTorch 2.5.1+cu121",
            "xformers-disabled",
        ),
        (
            "Pipelines loaded with `dtype=torch.float16` cannot run with `cpu` device.",
            "cpu-fallback",
        ),
    ],
)
def test_catalog_covers_the_gpu_side_phrases(line: str, category: str) -> None:
    hits = scan_text(f"\x1b[1;31m{line}\x1b[m")
    assert [h.category for h in hits] == [category]


@pytest.mark.parametrize(
    "line",
    [
        "Creating session with providers ['CUDAExecutionProvider', 'CPUExecutionProvider']",
        "Some nodes were not assigned to the preferred execution providers which may or may "
        "not have an negative impact on performance.",
        "using fallback font DejaVuSans for the watermark",
        "torch.backends.cuda.flash_sdp_enabled() = True",
        "TensorRT engine loaded from cache in 0.41 s",
    ],
)
def test_healthy_lines_are_not_hits(line: str) -> None:
    assert scan_text(line) == []


def test_policy_phrases_and_line_numbers() -> None:
    phrases = (*CATALOG, *compile_phrases([r"generic tactic"]))
    hits = scan_text("a\nb\nusing a generic tactic for conv\n", source="x", phrases=phrases)
    assert [(h.line, h.category, h.phrase) for h in hits] == [(3, "policy", "generic tactic")]
    with pytest.raises(ValueError, match="not a valid regex"):
        compile_phrases(["[unclosed"])
