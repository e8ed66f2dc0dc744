"""Lab tools: kernel and hardware experiments run from the repository root (tools/README.md)."""
