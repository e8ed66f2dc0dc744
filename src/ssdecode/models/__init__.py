"""Model implementations (native Llama family, Transformers fallback) and loaders."""
