"""`python -m inference_pod.worker` = `loraplex worker`."""

from inference_pod.worker.server import main

main()
