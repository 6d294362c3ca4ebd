"""``python -m gradguide`` runs the command-line tool."""

import sys

from gradguide.cli import main

sys.exit(main())
