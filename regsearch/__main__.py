"""`python -m regsearch`."""

import sys

from regsearch.cli import main

sys.exit(main())
