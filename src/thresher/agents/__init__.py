"""Selectors the trainer drives: agents, the agent console, Quad's cluster bandit and baseline policies."""
