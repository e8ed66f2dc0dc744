"""The OpenAI-compatible HTTP server: ``build_app`` (app.py) over one engine thread
(engine_loop.py), run by ``serve`` (serve.py, ``ssdecode serve``)."""
