"""OpenAI's response and stream-chunk shapes for completions and chat completions.

The two endpoints differ only in object names and in how a choice holds its text (``text`` vs
``message`` / ``delta``), so one small class renders both. ``usage`` adds speculation numbers to
OpenAI's token counts: draft tokens proposed and accepted, SSD cache hits and misses, and the mode.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from ssdecode.engine.request import Request


@dataclass(frozen=True)
class OpenAIFormat:
    chat: bool
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def for_call(cls, chat: bool, model: str) -> OpenAIFormat:
        prefix = "chatcmpl" if chat else "cmpl"
        return cls(chat, model, f"{prefix}-{uuid.uuid4().hex}")

    def _envelope(self, obj: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def response(self, requests: list[Request], mode: str, token_ids: bool = False) -> dict:
        """A whole (non-streamed) response: choice i is ``requests[i]`` (``token_ids``: with its
        generated ids)."""
        choices = []
        for i, req in enumerate(requests):
            body = {"message": {"role": "assistant", "content": req.text}} if self.chat else {"text": req.text}
            choices.append({"index": i, **body, "logprobs": None, "finish_reason": req.finish_reason})
            if token_ids:
                choices[-1]["token_ids"] = list(req.output_ids)
        out = self._envelope("chat.completion" if self.chat else "text_completion", choices)
        out["usage"] = usage(requests, mode)
        return out

    def chunk(self, index: int, text: str | None, finish_reason: str | None, include_usage: bool,
              role: bool = False, token_ids: list[int] | None = None) -> dict:
        """One stream chunk for one choice (``role``: chat's opening chunk of a choice;
        ``token_ids``: the ids this chunk adds, when the request asked for them)."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        if token_ids is not None:
            choice["token_ids"] = token_ids
        out = self._envelope(self._chunk_object, [choice])
        if include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, requests: list[Request], mode: str) -> dict:
        """The last chunk of a stream with ``include_usage``: no choices, the usage."""
        out = self._envelope(self._chunk_object, [])
        out["usage"] = usage(requests, mode)
        return out

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"


def usage(requests: list[Request], mode: str) -> dict:
    """Token counts of one call (its n choices share the prompt, counted once) and speculation:
    verification rounds and draft tokens (their ratio is the K the call ran at: under auto it
    varies by round, and AR rounds verify nothing), and ``mode`` (auto: what it picked and why)."""
    prompt = len(requests[0].seq.prompt_ids)
    completion = sum(len(r.output_ids) for r in requests)
    metrics = [r.metrics for r in requests]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "verify_rounds": sum(m.verifications for m in metrics),  # draft_tokens / verify_rounds = mean K
            "draft_tokens": sum(m.draft_proposed for m in metrics),
            "accepted_tokens": sum(m.draft_accepted for m in metrics),
            "ssd_hits": sum(m.hits for m in metrics), "ssd_misses": sum(m.misses for m in metrics),
            "mode": mode}


def sse(payload: dict | str) -> str:
    """One server-sent event: ``data: <json>`` (or a literal such as ``[DONE]``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"
