"""`advunlearn train`: AdvUnlearn's loop (trainer.py, read top to bottom), its configuration,
the pure losses and soft-prompt attacker, where z_t comes from (fresh rollouts or the
trajectory bank), which parameters are trained, and what makes the engine fast (graphs,
checkpointing, compile, 8-bit Adam)."""
