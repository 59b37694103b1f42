"""``python -m minicoat.assignments build OUT [--solutions] [--force]``."""

import sys

from .build import main

sys.exit(main())
