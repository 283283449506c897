"""``python -m sd_server``: same as the ``sd-server`` console script."""

from __future__ import annotations

import sys

from sd_server.cli import main

sys.exit(main())
