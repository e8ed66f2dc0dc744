"""The KV cache (cache.py) and how one forward addresses it (forward_meta.py): what a model's
forward reads, below the models and the runner that drives them."""
