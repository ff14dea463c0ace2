"""``python -m taskpipe``: the same as the ``taskpipe`` command."""

import sys

from taskpipe.cli import main

sys.exit(main())
