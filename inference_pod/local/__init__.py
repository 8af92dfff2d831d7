"""The local stack: the demo adapters and a worker + sidecar on loopback with the tiny model (`./dev demo`).

`lora_factory` is the one LoRA factory used by the demo, the tests and the benchmarks; `stack` starts the processes,
sends the demo requests and prints the table.
"""
