"""ssdecode: exact speculative speculative decoding (Saguaro), speculative decoding and AR decoding."""
from ssdecode.params import SamplingParams

__all__ = ["SamplingParams", "LLM"]


def __getattr__(name):
    # lazy start-up: LLM pulls in torch and transformers; `import ssdecode` stays cheap.
    if name == "LLM":
        from ssdecode.engine.llm import LLM

        return LLM
    raise AttributeError(name)
