"""``python -m portd``: the same as the ``portd`` command."""

from __future__ import annotations

import sys

from portd.cli import main

sys.exit(main())
