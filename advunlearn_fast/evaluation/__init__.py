"""`advunlearn attack`, `generate` and `eval`: UnlearnDiffAtk and the soft-prompt attack with
their judges (ASR), images with an encoder plugged in, and utility metrics (CLIP score, FID)
with their networks loaded from local weights."""
