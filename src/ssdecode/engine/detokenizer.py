"""Incremental detokenization: each committed token costs two decodes of a short window, not a
decode of the whole output (which made stop checks and streaming quadratic in its length).

The window starts at ``prefix_offset``, a few tokens back, so tokenizers that change a token's text
by its left neighbour (leading-space rules, byte-level merges) decode it in context; the new text
is the window's decode minus the decode of the part already emitted. A window ending in the
replacement character is an incomplete UTF-8 sequence and waits for the next token; meanwhile
its decode is kept as ``tail``, so a stop string that ends before the incomplete character is
still seen at once, and a request that ends there keeps the same text a full decode gives.
"""
from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""  # settled text
        self.tail = ""  # decode of the tokens after read_offset (ends in an incomplete character)
        self.prefix_offset = 0  # window start: tokens before it are settled
        self.read_offset = 0  # tokens before it are in self.text

    @property
    def full_text(self) -> str:
        """What a full decode of the ids gives: the settled text and the pending tail."""
        return self.text + self.tail

    def add(self, token: int) -> str:
        """Append one token id; return the text it completes (possibly '')."""
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        after = decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            self.tail = after[len(before):]
            return ""
        delta, self.tail = after[len(before):], ""
        self.text += delta
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return delta
