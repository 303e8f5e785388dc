"""``python -m minerwatch``: the same entry point as the ``minerwatch`` command."""

import sys

from minerwatch.service.cli import main

sys.exit(main())
