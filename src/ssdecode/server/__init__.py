"""ssdecode.server."""
