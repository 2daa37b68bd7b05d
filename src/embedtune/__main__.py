"""``python -m embedtune`` (also what ``torchrun -m embedtune train ...`` runs)."""

import sys

from .cli import main

sys.exit(main())
