"""Examples for downstream consumers of the ingestor's topics (not part of the package)."""
