"""Influence engine: per-document rewards g_ref^T H^-1 g_x from the current model."""
