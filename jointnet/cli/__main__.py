"""``python -m jointnet.cli``: the command line."""

import sys

from jointnet.cli.commands import main

sys.exit(main())
