"""Frozen, validated settings: the engine's (settings.py), the SSD algorithm's (ssd.py), the draft
worker's deployment (deploy.py) and the weight formats (formats.py). Plain data, importable from
every layer; nothing here loads a model."""
