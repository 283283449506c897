"""The UNet as an exported ONNX graph run by ONNX Runtime, with I/O binding.

Why this exists: ONNX Runtime's failure mode is the talk's first pathology. Asked for
``[CUDA, CPU]`` on a machine where CUDA cannot load, it binds the CPU execution provider, emits one
Python warning (shown once per call site) and carries on 50x slower. This module builds that path
for real and reports the truth: the session's *bound* providers (``session.get_providers()``), the
warnings captured while creating it, and where the I/O binding actually lives.

The graph is exported from the fp32 torch UNet once (torch's TorchScript exporter, opset 17) and
cached on disk under a key of the model, its config and the library versions.

Its runtime settings (CUDA arena strategy, ``gpu_mem_limit``, ``cudnn_conv_algo_search``, the
TensorRT engine cache, the CPU arena) come from the command line (:class:`OrtRuntime`) and are
read back from the session (``get_provider_options()``, ``get_session_options()``) into
:class:`OrtBinding`, which ``/capabilities`` reports. Inputs are always bound in place
(I/O binding); host buffers are ordinary, not pinned, memory.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

__all__ = ["OrtBinding", "OrtUNet", "export_unet", "onnx_cache_key", "session_settings"]

_OPSET = 17
_INPUTS = ("sample", "timestep", "encoder_hidden_states")
_OUTPUT = "out_sample"
_CPU_EP = "CPUExecutionProvider"


@dataclass(frozen=True)
class OrtBinding:
    """What ONNX Runtime actually did with the requested provider list."""

    requested: tuple[str, ...]
    bound: tuple[str, ...]
    available: tuple[str, ...]
    io_device: str
    warnings: tuple[str, ...]
    onnx_path: str
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)
    session_options: dict[str, Any] = field(default_factory=dict)
    io_binding: bool = True
    pinned_memory: bool = False
    build_info: str | None = None
    ort_device: str | None = None

    @property
    def cpu_fallback(self) -> bool:
        """A non-CPU provider was requested but only the CPU EP was bound."""
        wanted_accel = any(p != _CPU_EP for p in self.requested)
        bound_accel = any(p != _CPU_EP for p in self.bound)
        return wanted_accel and not bound_accel


#: Session options read back into :attr:`OrtBinding.session_options`.
_SESSION_KEYS = ("enable_cpu_mem_arena", "enable_mem_pattern", "intra_op_num_threads",
                 "inter_op_num_threads", "graph_optimization_level", "execution_mode")


def session_settings(session: Any) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """What ORT says is in effect: provider options (defaults filled in) and session options."""
    opts = session.get_session_options()
    session_opts: dict[str, Any] = {}
    for key in _SESSION_KEYS:
        value = getattr(opts, key, None)
        if value is not None:
            session_opts[key] = value if isinstance(value, bool | int) else str(value)
    providers = {p: {k: str(v) for k, v in o.items()}
                 for p, o in session.get_provider_options().items()}
    return providers, session_opts


class _Exportable(torch.nn.Module):
    """Positional-only view of the UNet: the exporter traces ``forward(sample, t, ehs)``."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor = self.unet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False
        )[0]
        return out


def onnx_cache_key(model: str, unet: UNet2DConditionModel, weights_seed: int) -> str:
    """Hash of everything that changes the exported graph or its weights.

    For a checkpoint directory the UNet weight files' sizes and mtimes stand in for the weights
    (hashing gigabytes at every start would cost more than the export).
    """
    import diffusers

    parts: dict[str, Any] = {
        "model": model,
        "seed": weights_seed,
        "config": dict(unet.config),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "opset": _OPSET,
    }
    unet_dir = Path(model) / "unet"
    if unet_dir.is_dir():
        parts["model"] = str(Path(model).resolve())
        parts["files"] = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in unet_dir.iterdir()
        )
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def export_unet(unet: UNet2DConditionModel, directory: Path) -> Path:
    """Export ``unet`` (fp32, CPU) to ``directory/unet.onnx`` unless it is already there.

    Large models (SD 1.5's UNet is 3.4 GB in fp32) go to external data files beside the graph,
    which is why each export gets its own directory. The file appears atomically: a crashed
    export leaves no half-written graph that a later start would trust.
    """
    target = directory / "unet.onnx"
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / "unet.onnx.partial"
    cfg = unet.config
    side = int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
    example = (
        torch.randn(2, int(cfg.in_channels), side, side),
        torch.tensor([999.0]),
        torch.randn(2, 77, int(cfg.cross_attention_dim)),
    )
    module = _Exportable(unet.to(device="cpu", dtype=torch.float32)).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every shape assert in diffusers; none affects this graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(partial),
            input_names=list(_INPUTS),
            output_names=[_OUTPUT],
            dynamic_axes={
                "sample": {0: "batch", 2: "height", 3: "width"},
                "timestep": {0: "timesteps"},
                "encoder_hidden_states": {0: "batch"},
                _OUTPUT: {0: "batch", 2: "height", 3: "width"},
            },
            opset_version=_OPSET,
            dynamo=False,
        )
    partial.replace(target)
    return target


def _provider_args(providers: tuple[str, ...], options: Mapping[str, Mapping[str, str]],
                   index: int) -> list[Any]:
    """``InferenceSession``'s provider list: names, or (name, options) where options are set."""
    out: list[Any] = []
    for p in providers:
        opts = dict(options.get(p, {}))
        if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            opts = {"device_id": str(index), **opts}
        out.append((p, opts) if opts else p)
    return out


class OrtUNet(torch.nn.Module):
    """Drop-in replacement for the pipeline's UNet that runs an ONNX Runtime session.

    It keeps the torch UNet's ``config`` (the pipeline reads sample size and channels from it)
    and exposes ``device``/``dtype`` like a diffusers model. Inputs are bound in place: on the
    GPU when a CUDA provider was bound, else on the host after one copy each way, which is the
    real cost of the CPU fallback.
    """

    def __init__(
        self,
        onnx_path: Path,
        config: Any,
        *,
        providers: tuple[str, ...],
        device: torch.device,
        dtype: torch.dtype,
        threads: int | None = None,
        provider_options: Mapping[str, Mapping[str, str]] | None = None,
        session_options: Mapping[str, bool] | None = None,
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        self.config = config
        self._device = device
        self._dtype = dtype
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        for key, value in (session_options or {}).items():
            setattr(options, key, value)
        index = device.index or 0
        provider_args = _provider_args(providers, provider_options or {}, index)
        with warnings.catch_warnings(record=True) as caught:
            # "always": Python's default filter shows this warning once per call site, so a
            # second session in the same process would otherwise fall back in silence.
            warnings.simplefilter("always")
            self._session = ort.InferenceSession(
                str(onnx_path), options, providers=provider_args
            )
        bound = tuple(self._session.get_providers())
        on_gpu = device.type == "cuda" and any(p != _CPU_EP for p in bound)
        self._io_device = torch.device(device.type, index) if on_gpu else torch.device("cpu")
        in_effect, session_opts = session_settings(self._session)
        build_info = getattr(ort, "get_build_info", None)
        self.binding = OrtBinding(
            requested=providers,
            bound=bound,
            available=tuple(ort.get_available_providers()),
            io_device=str(self._io_device),
            warnings=tuple(str(w.message) for w in caught),
            onnx_path=str(onnx_path),
            provider_options=in_effect,
            session_options=session_opts,
            build_info=build_info() if callable(build_info) else None,
            ort_device=ort.get_device(),
        )

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        if timestep_cond is not None or cross_attention_kwargs or added_cond_kwargs:
            raise NotImplementedError("the exported UNet takes sample, timestep and text only")
        io = self._io_device
        t = torch.as_tensor(timestep).reshape(-1)
        inputs = {
            "sample": sample.to(io, torch.float32).contiguous(),
            "timestep": t.to(io, torch.float32).contiguous(),
            "encoder_hidden_states": encoder_hidden_states.to(io, torch.float32).contiguous(),
        }
        out = torch.empty(inputs["sample"].shape, dtype=torch.float32, device=io)
        binding = self._session.io_binding()
        index = io.index or 0
        for name, tensor in inputs.items():
            binding.bind_input(
                name, io.type, index, np.float32, list(tensor.shape), tensor.data_ptr()
            )
        binding.bind_output(_OUTPUT, io.type, index, np.float32, list(out.shape), out.data_ptr())
        if io.type == "cuda":
            # ORT computes on its own stream: let torch finish writing the inputs first.
            torch.cuda.current_stream(io).synchronize()
        self._session.run_with_iobinding(binding)
        if io.type == "cuda":
            binding.synchronize_outputs()  # the output lives in torch memory on the device
        result = out.to(sample.device, sample.dtype)
        if not return_dict:
            return (result,)
        return UNet2DConditionOutput(sample=result)
