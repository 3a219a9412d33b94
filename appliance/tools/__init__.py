"""Tool servers the model can call: sandbox, files, search, scrape."""
