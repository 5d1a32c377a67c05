"""advunlearn: robust concept erasure (AdvUnlearn) for Stable Diffusion v1.x."""

__version__ = "0.1.0"
