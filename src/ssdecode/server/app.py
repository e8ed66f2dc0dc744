"""The OpenAI-compatible HTTP API over one loaded LLM: ``build_app(llm, model_name)``.

Routes: POST /v1/completions (raw prompt: text or token ids), POST /v1/chat/completions (the
tokenizer's chat template), both streamed (server-sent events) or not; GET /v1/models; GET /health;
GET /metrics (Prometheus). A call with ``n`` choices is ``n`` independent engine requests.
Generation runs on the engine thread (engine_loop.py); a handler only validates, submits and
relays, and a client that goes away aborts its requests, which frees their slots at once.
"""
from __future__ import annotations

import asyncio
import secrets
import time
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from ssdecode.server.engine_loop import AsyncEngine, EngineStopped, RequestGroup
from ssdecode.server.errors import APIError, as_api_error, error_body, install_error_handlers
from ssdecode.server.metrics import ServerMetrics
from ssdecode.server.protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest
from ssdecode.server.responses import OpenAIFormat, sse

DEFAULT_MAX_QUEUE = 64
CLIENT_CLOSED = 499  # nginx's code for "the client closed the connection"; nobody reads it


def build_app(llm, model_name: str, api_key: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE) -> FastAPI:
    """An app serving ``llm`` as ``model_name``. It owns the LLM from startup on: shutdown aborts
    what is in flight and closes it. ``api_key``: required as ``Authorization: Bearer <key>`` on
    /v1 routes (/health and /metrics stay open)."""
    metrics = ServerMetrics(llm.strategy_name)  # auto may have picked ssd
    engine = AsyncEngine(llm, max_queue, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        await asyncio.to_thread(engine.close)

    app = FastAPI(title="ssdecode", lifespan=lifespan)
    app.state.engine = engine
    install_error_handlers(app, metrics)
    created = int(time.time())
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_bearer(api_key))])

    def served(body: GenerationRequest) -> None:
        if body.model != model_name:
            raise APIError(404, f"the model '{body.model}' does not exist; this server serves '{model_name}'",
                           param="model", code="model_not_found")
        body.check_supported()

    @v1.get("/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "ssdecode", "max_model_len": engine.max_model_len}]}

    @v1.post("/completions")
    async def completions(body: CompletionRequest, request: Request):
        served(body)
        ids = body.prompt if isinstance(body.prompt, list) else llm.encode(body.prompt, chat=False)
        return await _respond(request, engine, body, ids, OpenAIFormat.for_call(False, model_name))

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        served(body)
        ids = _chat_prompt(llm, [m.as_template_input() for m in body.messages])
        return await _respond(request, engine, body, ids, OpenAIFormat.for_call(True, model_name))

    app.include_router(v1)

    @app.get("/health")
    async def health():
        state = engine.state
        status = "error" if state.failed else ("stopping" if not engine.accepting else
                                               "degraded" if state.degraded else "ok")
        body = {"status": status, "running": state.running, "waiting": state.waiting,
                "free_slots": state.free_slots, "max_num_seqs": engine.max_num_seqs}
        if state.degraded:  # still serving, exactly, without the SSD draft worker
            body["degraded"] = f"the draft worker failed ({state.degraded}); requests continue without it"
        return JSONResponse(body, 200 if status in ("ok", "degraded") else 503)

    @app.get("/metrics")
    async def prometheus_metrics():
        stats = {}
        try:
            stats = await engine.call(llm.stats)
        except EngineStopped:
            pass
        return Response(metrics.render(engine.state, stats), media_type=CONTENT_TYPE_LATEST)

    return app


def _bearer(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")
    return check


def _chat_prompt(llm, messages: list[dict]) -> list[int]:
    if not llm.tokenizer.chat_template:
        raise APIError(400, "this model has no chat template; use /v1/completions")
    try:
        return llm.encode_chat(messages)
    except Exception as e:  # the template's own checks (role order, ...) raise
        raise APIError(400, f"the chat template refused these messages: {e}", param="messages") from e


async def _respond(request: Request, engine: AsyncEngine, body: GenerationRequest, ids: list[int], fmt: OpenAIFormat):
    engine.check_prompt(ids)
    if body.n > engine.capacity:
        raise APIError(400, f"n={body.n} exceeds what this server runs at once ({engine.capacity})", param="n")
    group = engine.submit(ids, body.sampling_params(len(ids), engine.max_model_len))
    if body.stream:
        return StreamingResponse(_stream(group, fmt, body.include_usage, engine.llm.mode_label, body.return_token_ids),
                                 media_type="text/event-stream")
    collect = asyncio.ensure_future(_collect(group))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # a collector cancelled before it finished aborts its requests
        collect.cancel()
        gone.cancel()
    if collect not in done:  # the client left
        return Response(status_code=CLIENT_CLOSED)
    return fmt.response(collect.result(), engine.llm.mode_label, body.return_token_ids)


async def _collect(group: RequestGroup) -> list:
    """Every choice's finished engine Request, in choice order."""
    finished = {}
    async with group:
        async for index, out in group:
            if out.finished:
                finished[index] = out.request
    return [finished[i] for i in range(len(finished))]


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body is read already, so only that is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(group: RequestGroup, fmt: OpenAIFormat, include_usage: bool, mode: str, token_ids: bool):
    """Server-sent events: a chunk per choice per engine step that produced text (chat: a role
    chunk per choice first), the usage chunk if asked for, ``[DONE]``. A client that goes away
    cancels this generator inside ``async with group``, which aborts the requests."""
    finished = {}
    async with group:
        try:
            if fmt.chat:
                for i in range(len(group.params)):
                    yield sse(fmt.chunk(i, None, None, include_usage, role=True))
            async for index, out in group:
                if out.text or out.finished or (token_ids and out.new_token_ids):
                    yield sse(fmt.chunk(index, out.text, out.finish_reason if out.finished else None,
                                        include_usage, token_ids=out.new_token_ids if token_ids else None))
                if out.finished:
                    finished[index] = out.request
        except Exception as e:  # the engine stopped or failed mid-stream: say so, in OpenAI's shape
            err = as_api_error(e)
            yield sse(error_body(err.status, err.message, err.param, err.code))
            return
    if include_usage:
        yield sse(fmt.usage_chunk([finished[i] for i in range(len(finished))], mode))
    yield sse("[DONE]")
