"""Prompt sets: the deterministic requests a canary sends, loaded from YAML and validated.

A prompt set names each request class once (prompt, negative prompt, seed, steps, size,
guidance, batch), so both arms of a slice get byte-identical work and the output check can
expect identical images. A ``defaults`` block fills fields a prompt leaves out::

    name: tiny-64
    defaults: {steps: 4, width: 64, height: 64, guidance: 7.5}
    prompts:
      - {id: cat, prompt: "a cat", seed: 1}

Errors carry the file, the 1-based line and the YAML path, like policy errors.

Prompt sets ship with the package (``gates/canary/prompt_sets/NAME.yaml``, package data; the
checkout's ``policies/prompts/`` links to them), so a bare name such as ``sd15-512`` loads from
any working directory, installed or editable: :func:`resolve_prompts` says which file a
reference means, relative paths against the directory given (a policy's own directory).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

__all__ = ["DEFAULT_PROMPT_SET", "Prompt", "PromptDefaults", "PromptSet", "PromptSetError",
           "load_prompts", "parse_prompts", "resolve_prompts", "shipped_prompt_sets"]

#: The prompt set a policy's canary uses when it names none.
DEFAULT_PROMPT_SET = "sd15-512"
# A shipped set's name: no directory, no extension.
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
# The checkout-relative form earlier releases documented (``policies/prompts/NAME.yaml``).
_LEGACY = re.compile(r"(?:\./)?policies/prompts/([a-z0-9][a-z0-9._-]*)\.ya?ml")

_CONFIG = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                     frozen=True)

# One definition of each constraint, shared by a prompt and the defaults block.
_Steps = Annotated[int, Field(ge=1, le=1000, description="Denoising steps.")]
_Side = Annotated[int, Field(ge=8, le=8192, multiple_of=8, description=(
    "Image side in pixels; SD's VAE needs a multiple of 8."))]
_Guidance = Annotated[float, Field(ge=0, le=100, description="Classifier-free guidance scale.")]
_Batch = Annotated[int, Field(ge=1, le=16, description="Images per request.")]


class Prompt(BaseModel):
    """One deterministic request class: what every arm of a slice is asked to draw."""

    model_config = _CONFIG

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                    description="Stable identifier written into every record.")
    prompt: str = Field(min_length=1)
    negative_prompt: str = ""
    seed: int = Field(ge=0, lt=2**32, description=(
        "Base seed; slice seeds add the cycle number so a response cache cannot answer."))
    steps: _Steps = 25
    width: _Side = 512
    height: _Side = 512
    guidance: _Guidance = 7.5
    batch: _Batch = 1


class PromptDefaults(BaseModel):
    """Values every prompt of the set takes unless it sets its own."""

    model_config = _CONFIG

    negative_prompt: str | None = None
    steps: _Steps | None = None
    width: _Side | None = None
    height: _Side | None = None
    guidance: _Guidance | None = None
    batch: _Batch | None = None


class PromptSet(BaseModel):
    """A named, non-empty list of prompts with unique ids."""

    model_config = _CONFIG

    name: str = Field(min_length=1)
    description: str = ""
    defaults: PromptDefaults = Field(default_factory=PromptDefaults)
    prompts: list[Prompt] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        """Fill each prompt's missing fields from ``defaults`` (raw keys, either spelling)."""
        if not isinstance(data, dict):
            return data
        defaults = data.get("defaults")
        prompts = data.get("prompts")
        if not isinstance(defaults, dict) or not isinstance(prompts, list):
            return data
        return {**data, "prompts": [
            {**{k: v for k, v in defaults.items() if _snake(k) not in {_snake(g) for g in p}},
             **p} if isinstance(p, dict) else p
            for p in prompts]}

    @model_validator(mode="after")
    def _unique_ids(self) -> PromptSet:
        ids = [p.id for p in self.prompts]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"prompt ids must be unique; repeated: {', '.join(dupes)}")
        return self


class PromptSetError(ValueError):
    """A prompt-set file is invalid; ``issues`` holds ``(line, yaml path, message)`` each.

    Every problem is reported, not just the first (line 0: it concerns the whole file).
    """

    def __init__(self, file: str, issues: Sequence[tuple[int, str, str]]) -> None:
        self.file = file
        self.issues = tuple(issues)
        super().__init__("\n".join(
            f"{file}{f':{line}' if line else ''}: {path or '<document>'}: {msg}"
            for line, path, msg in self.issues))


def _shipped_dir() -> Path:
    return Path(str(resources.files("gates.canary") / "prompt_sets"))


def shipped_prompt_sets() -> tuple[str, ...]:
    """Names of the prompt sets shipped with the package, e.g. ``("sd15-512", ...)``."""
    return tuple(sorted(p.stem for p in _shipped_dir().glob("*.yaml")))


def resolve_prompts(ref: str | Path, base_dir: Path | None = None) -> Path:
    """The file a prompt-set reference means.

    * a bare name (``sd15-512``: no ``/``, no ``.yaml``) is the shipped set of that name;
    * an absolute path is itself; a relative path is taken against ``base_dir`` (a policy's
      directory), or the working directory when ``base_dir`` is None;
    * ``policies/prompts/NAME.yaml`` (the form earlier releases documented) that does not
      exist there is the shipped set NAME.

    Raises:
        PromptSetError: a bare name that is not a shipped set (the message lists them).
    """
    text = str(ref).strip()
    if _NAME.fullmatch(text) and not text.endswith((".yaml", ".yml")):
        path = _shipped_dir() / f"{text}.yaml"
        if not path.is_file():
            raise PromptSetError(text, ((0, "", (
                f"no shipped prompt set named {text!r}; shipped: "
                f"{', '.join(shipped_prompt_sets()) or 'none'} (or give a path to a YAML "
                "file)")),))
        return path
    path = Path(text)
    if not path.is_absolute():
        path = (base_dir if base_dir is not None else Path.cwd()) / path
    legacy = _LEGACY.fullmatch(text.replace("\\", "/"))
    if legacy and not path.exists():
        shipped = _shipped_dir() / f"{legacy.group(1)}.yaml"
        if shipped.is_file():
            return shipped
    return path


def load_prompts(path: str | Path, base_dir: Path | None = None) -> PromptSet:
    """Read and validate a prompt-set YAML file (a reference as :func:`resolve_prompts` reads it).

    Raises:
        PromptSetError: unknown shipped name, unreadable file, invalid YAML, or schema
            violations (all of them).
    """
    p = resolve_prompts(path, base_dir)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PromptSetError(str(p), ((0, "", f"cannot read the file: {e}"),)) from e
    return parse_prompts(text, str(p))


def parse_prompts(text: str, file: str = "<prompts>") -> PromptSet:
    """Validate prompt-set YAML ``text``; ``file`` labels the messages.

    Raises:
        PromptSetError: invalid YAML or schema violations.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise PromptSetError(file, ((mark.line + 1 if mark else 0, "",
                                     f"invalid YAML: {e}"),)) from e
    try:
        return PromptSet.model_validate(data)
    except ValidationError as e:
        raise PromptSetError(file, tuple(
            (_line_of(node, err["loc"]), _dotted(err["loc"]), err["msg"])
            for err in e.errors())) from e


def _snake(key: Any) -> str:
    """``negativePrompt`` -> ``negative_prompt`` (keys may use either spelling)."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in str(key))


def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int:
    """1-based line of the deepest YAML node along ``loc`` that exists (0 without a document)."""
    if node is None:
        return 0
    line = node.start_mark.line + 1
    for part in loc:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if _snake(k.value) == _snake(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and 0 <= part < len(node.value):
            nxt = node.value[part]
        if nxt is None:
            break
        node, line = nxt, nxt.start_mark.line + 1
    return line


def _dotted(loc: Sequence[int | str]) -> str:
    out = ""
    for k in loc:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out
