"""ssdecode.engine."""
