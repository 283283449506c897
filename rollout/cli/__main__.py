"""``python -m rollout.cli``."""

from rollout.cli import main

main()
