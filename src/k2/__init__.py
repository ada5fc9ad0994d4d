"""K2: an open market-data platform for crypto."""

__version__ = "0.1.0"
