"""Bad command-line input fails before the slow part, with one clear line: every option is
checked before a model loads (the target here does not even exist, so an error about the option
proves it came first), and a prompt whose bytes are not UTF-8 is decoded leniently (U+FFFD)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from server_support import save_tiny_pair
from ssdecode.cli import main

MISSING = "/nonexistent/model-folder"


@pytest.mark.parametrize("args, says", [
    (["--mode", "sd", "--k", "0"], "K (draft tokens per round)"),
    (["--mode", "ssd", "--budget", "-1"], "fan-out budget"),
    (["--mode", "ssd", "--fanout", "bogus"], "fan-out must be"),
    (["--mode", "ssd", "--saguaro-c", "2"], "Saguaro constant"),
    (["--mode", "sd", "--draft-confidence", "1.5"], "confidence threshold"),
    (["--temperature", "-1"], "temperature"),
    (["--max-tokens", "0"], "max_tokens"),
])
def test_generate_options_are_checked_before_loading(args, says, capsys):
    assert main(["generate", "x", "--target", MISSING, *args]) == 2
    err = capsys.readouterr().err
    assert says in err and MISSING not in err and "Traceback" not in err


@pytest.mark.parametrize("args, says", [
    (["--max-model-len", "1"], "max_model_len"),
    (["--mode", "ssd", "--k", "-2"], "K (draft tokens per round)"),
])
def test_serve_options_are_checked_before_loading(args, says, capsys):
    assert main(["serve", "--target", MISSING, *args]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("args", [["generate", "x", "--threads", "-1"], ["generate", "x", "--draft-threads", "0"],
                                  ["serve", "--max-num-seqs", "0"], ["serve", "--max-queue", "-1"]])
def test_counts_are_refused_by_the_parser(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "must be >=" in capsys.readouterr().err


def test_a_prompt_that_is_not_utf8(tmp_path):
    target, _ = save_tiny_pair(tmp_path)
    out = subprocess.run([sys.executable, "-m", "ssdecode.cli", "generate", b"w1 \xff\xfe w2", "--target",
                          str(target), "--raw", "--max-tokens", "3", "--json", "--threads", "1"],
                         capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    result = json.loads(out.stdout)
    assert len(result["token_ids"]) == 3 and result["prompt_tokens"] >= 2
