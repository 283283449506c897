"""Write the example latency files `rollout compare` is demonstrated on (bench/data/).

Synthetic SD 1.5 512 px / 25 steps latencies from :mod:`gates.stats.simulate`, paired in time
slices (K = 1): ``blue.jsonl`` is the current deployment, ``green-healthy.jsonl`` the same
distribution, ``green-tail.jsonl`` a tail-only regression (P95 +30%, median unchanged: the case
rank tests miss). Deterministic: ``python bench/make_demo_data.py`` rewrites identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gates.stats.simulate import simulate

OUT = Path(__file__).parent / "data"
SLICES = 1200


def _write(path: Path, values: np.ndarray) -> None:
    path.write_text("".join(json.dumps({"latency_s": round(float(v), 4)}) + "\n"
                            for v in values))


def main() -> None:
    OUT.mkdir(exist_ok=True)
    healthy = simulate("null", SLICES, np.random.default_rng(11))
    tail = simulate("tail+30%", SLICES, np.random.default_rng(12))
    _write(OUT / "blue.jsonl", healthy.blue.reshape(-1))
    _write(OUT / "green-healthy.jsonl", healthy.green)
    _write(OUT / "green-tail.jsonl", tail.green)
    print(f"wrote {SLICES} slices to {OUT}")


if __name__ == "__main__":
    main()
