"""loraplex: what the operator and the inference pods share (nothing else lives here)."""
