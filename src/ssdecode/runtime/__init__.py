"""ssdecode.runtime."""
