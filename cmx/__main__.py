"""Allow `python -m cmx`."""

import sys

from cmx.cli import main

sys.exit(main())
