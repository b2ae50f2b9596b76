"""The training spine: configs, the loop, optimizers and schedules, checkpoints, run logging."""
