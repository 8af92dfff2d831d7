"""loraplex data plane: the diffusion worker and the router sidecar of an inference pod."""
