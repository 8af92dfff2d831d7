"""`python -m inference_pod.router` = `loraplex sidecar`."""

import sys

from inference_pod.router.sidecar import main

sys.exit(main())
