"""ssdecode.transport."""
