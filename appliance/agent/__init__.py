"""The ReAct loop, its events and context keeping."""
