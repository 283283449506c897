"""Reference Stable Diffusion server for rollout-gates: serves only on the path it can prove.

See ``deploy/sd-server/README.md``; the entry point is :func:`sd_server.cli.main`.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
