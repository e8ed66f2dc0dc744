"""Speculative speculative decoding (Saguaro): config, fan-out, tree decode, backup speculators,
the draft worker and the target-side strategy. Import submodules directly; this package stays
light so the worker process imports only what it needs."""
