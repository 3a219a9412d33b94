"""MCP both ways: the user's MCP servers as tool servers of a run, and `appliance mcp serve`."""
