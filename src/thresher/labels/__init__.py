"""Offline labelling: labelers, executors and the label table (the agents' memory)."""
