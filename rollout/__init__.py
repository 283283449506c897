"""rollout-gates: the controller side (policies, state machine, routers, platforms, CLI).

The statistics and gates live in the sibling package :mod:`gates`; nothing here imports torch.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
