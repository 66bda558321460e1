"""``python -m receiver.cli``: the console script."""

import sys

from receiver.cli import main

sys.exit(main())
