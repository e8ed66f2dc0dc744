"""The OpenAI request bodies this server takes, validated once here and turned into SamplingParams.

Strict types (no "2" for 2). OpenAI parameters that would change the output and that the engine
does not implement (logprobs, echo, best_of, penalties, logit_bias, tools, ...) are refused unless
they hold their neutral value: a client asking for them must not get output that silently ignores
them. Unknown parameters are refused too; the few that change nothing (user, metadata ...) pass.
vLLM's extras ``top_k``, ``ignore_eos`` and ``return_token_ids`` (each choice, and each stream
chunk, also carries the generated token ids) are supported.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ssdecode.kv.cache import ContextOverflow
from ssdecode.params import SamplingParams
from ssdecode.server.errors import APIError

# Output-changing parameters, accepted only at one of these values.
NEUTRAL: dict[str, tuple] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
    "suffix": (None, ""), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0), "min_p": (None, 0, 0.0), "logit_bias": (None, {}),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}), "modalities": (None, ["text"]),
}
HARMLESS = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)
    include_usage: bool = False


class GenerationRequest(BaseModel):
    """What completions and chat completions share."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str
    max_tokens: int | None = None
    temperature: float = 1.0  # OpenAI's default; 0 is greedy
    top_p: float = 1.0
    top_k: int = 0  # vLLM extra; 0 (or -1) is off
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM extra
    return_token_ids: bool = False  # vLLM extra: choices carry ``token_ids``

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def check_supported(self) -> None:
        for name, value in (self.model_extra or {}).items():
            if name in HARMLESS:
                continue
            if name not in NEUTRAL:
                raise APIError(400, f"unknown parameter '{name}'", param=name)
            if not any(value == v and type(value) is type(v) for v in NEUTRAL[name]):
                raise APIError(400, f"'{name}' is not supported by this server (only {NEUTRAL[name][1]!r} "
                                    "or leaving it out)", param=name)

    def sampling_params(self, prompt_tokens: int, max_model_len: int) -> list[SamplingParams]:
        """One SamplingParams per choice; choice i of a seeded request uses seed + i.
        ``max_tokens`` defaults to the room the prompt leaves in the context."""
        max_tokens = self.requested_max_tokens()
        if max_tokens is None:
            max_tokens = max_model_len - prompt_tokens
        elif prompt_tokens + max_tokens > max_model_len:
            raise ContextOverflow(
                f"this model's maximum context length is {max_model_len} tokens; you requested "
                f"{prompt_tokens + max_tokens} ({prompt_tokens} in the prompt, {max_tokens} for the "
                "completion): shorten the prompt or lower max_tokens")
        if self.n < 1:
            raise APIError(400, f"n must be >= 1, got {self.n}", param="n")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return [SamplingParams(temperature=self.temperature, top_k=0 if self.top_k == -1 else self.top_k,
                               top_p=self.top_p, max_tokens=max_tokens,
                               seed=None if self.seed is None else self.seed + i, stop=stop,
                               ignore_eos=self.ignore_eos)
                for i in range(self.n)]


class CompletionRequest(GenerationRequest):
    prompt: str | list[int]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_template_input(self) -> dict:
        """The dict a chat template takes (``developer`` is OpenAI's newer name for system)."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
