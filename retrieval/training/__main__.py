"""``python -m retrieval.training``: see :mod:`retrieval.training.cli`."""
import sys

from .cli import main

sys.exit(main())
