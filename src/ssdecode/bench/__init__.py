"""ssdecode.bench."""
