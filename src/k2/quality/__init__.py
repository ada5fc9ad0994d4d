"""Data quality: validation, rejects, dedup, gap detection and repair."""
