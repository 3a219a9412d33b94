"""Search: SearXNG, a local SQLite FTS5 corpus and Kiwix ZIM archives, merged for google_search."""
