"""``python -m retrieval.cli``: the ``retrieval`` console script."""
import sys

from retrieval.cli import main

sys.exit(main())
