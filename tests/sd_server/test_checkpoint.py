"""``--model PATH``: a local diffusers directory loads offline and is the same model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def test_saved_tiny_checkpoint_loads_offline_and_draws_the_same_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from sd_server.config import PathConfig
    from sd_server.engine import Engine, GenerationSpec, Item
    from sd_server.models import build_pipeline

    torch.set_num_threads(1)
    pipe: Any = build_pipeline("tiny", seed=3)  # diffusers' methods are untyped
    pipe.save_pretrained(tmp_path)
    spec, items = GenerationSpec(64, 64, 3, 7.5), [Item("a cat", None, 5)]
    in_memory = Engine.load(PathConfig(model="tiny", weights_seed=3)).generate(spec, items)
    from_disk = Engine.load(PathConfig(model=str(tmp_path))).generate(spec, items)
    assert from_disk == in_memory
    other_weights = Engine.load(PathConfig(model="tiny", weights_seed=4)).generate(spec, items)
    assert other_weights != in_memory


def test_unknown_model_name_is_refused() -> None:
    from sd_server.models import build_pipeline

    with pytest.raises(FileNotFoundError, match="not one of sd15-arch, tiny nor a directory"):
        build_pipeline("sd99")
