"""The `drawing` demo model: a tiny SDXL-architecture pipeline trained here to draw coloured shapes, and its LoRAs."""
