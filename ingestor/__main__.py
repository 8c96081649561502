"""`python -m ingestor` runs the CLI."""

import sys

from ingestor.cli import main

sys.exit(main())
