"""ssdecode.plan."""
