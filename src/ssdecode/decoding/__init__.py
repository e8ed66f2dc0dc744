"""ssdecode.decoding."""
