"""``python -m minicoat.bench``."""

import sys

from . import main

sys.exit(main())
