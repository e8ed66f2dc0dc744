"""Running the app under uvicorn, with a shutdown that does not wait on open streams.

uvicorn's graceful shutdown (SIGINT / SIGTERM, or ``should_exit``) stops accepting connections
and then waits for every open response to finish, which for a long stream means its whole
generation. ``EngineServer`` aborts the requests in flight first, so their responses end at once;
then the app's lifespan shutdown closes the LLM, which shuts the SSD draft worker down, and the
process exits within seconds with no worker left behind.
"""
from __future__ import annotations

import socket

import uvicorn

from ssdecode.server.app import DEFAULT_MAX_QUEUE, build_app


class EngineServer(uvicorn.Server):
    """A uvicorn server for an app from ``build_app``."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.engine = config.app.state.engine

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.engine.stop()
        await super().shutdown(sockets)


def serve(llm, model_name: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_queue: int = DEFAULT_MAX_QUEUE, log_level: str = "info") -> None:
    """Serve ``llm`` until SIGINT / SIGTERM; the LLM is closed on return, whatever happened."""
    app = None
    try:
        app = build_app(llm, model_name, api_key=api_key, max_queue=max_queue)
        EngineServer(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                    timeout_graceful_shutdown=5)).run()
    finally:  # also when startup failed (port taken) or a forced exit skipped the lifespan shutdown
        if app is None:
            llm.close()
        else:
            app.state.engine.close()
