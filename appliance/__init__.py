"""The appliance: a local research agent speaking MiroThinker's tool protocol."""

__version__ = "0.1.0"
