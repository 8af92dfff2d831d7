"""`python -m loraplex` = the `loraplex` command."""

import sys

from loraplex.cli import main

sys.exit(main())
