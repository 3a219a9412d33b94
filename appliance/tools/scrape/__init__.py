"""Reading pages for the model: fetch, convert, cache, and extract what was asked with an LLM."""
