"""`python -m loraplex.sim sim|plan ...`"""

import sys

from .cli import main

sys.exit(main())
