"""Runs that tie the stages together: one training run under a policy, the demo, experiment grids."""
