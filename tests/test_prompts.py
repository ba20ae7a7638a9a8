"""Tests for pipeline/prompts.py: reading a prompts file and the prompts (ids) a draft samples."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fake_model import FakeDenoiser
from sbdcli import pipeline as pl
from sbdcli.errors import UserError

BOS, MASK = 10, 11  # FakeDenoiser() has vocabulary 12


class Codec:
    """A codec stand-in: one id per character 'a'.. ."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") for c in text]


def ref(codec: object = None) -> pl.ModelRef:
    return pl.ModelRef(FakeDenoiser(), "fake", "000000000000", codec)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    return str(path)


def test_read_prompts_tokens_text_ids_and_bos(tmp_path):
    path = write(
        tmp_path,
        '{"prompt_tokens": [1, 2]}\n{"prompt_tokens": [10, 3], "id": 7}\n{"prompt": "cab"}\n',
    )
    got = pl.read_prompts(path, ref(Codec()))
    assert got == [
        pl.Prompt("p1", [BOS, 1, 2]),  # BOS prepended
        pl.Prompt("7", [BOS, 3]),  # BOS kept, id as a string
        pl.Prompt("p3", [BOS, 2, 0, 1]),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"prompt_tokens": [1, "x"]}\n', r"p.jsonl:1: 'prompt_tokens' must be a list of integers"),
        ('{"prompt": "ab"}\n', "text prompts need the model's tokenizer"),
        ('{"other": 1}\n', "expected a 'prompt' or 'prompt_tokens' field"),
        ('{"prompt_tokens": [1]}\n{"prompt_tokens": [11]}\n', "p.jsonl:2: token id 11 is not"),
        ('{"prompt_tokens": [12]}\n', "token id 12 is not a valid prompt token"),
        ("", "no prompts"),
    ],
)
def test_read_prompts_errors(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        pl.read_prompts(write(tmp_path, text), ref())


def test_draft_prompts_ids():
    r = ref()
    assert pl.draft_prompts(r, 2, 5, None) == [pl.Prompt("s5-0", [BOS]), pl.Prompt("s5-1", [BOS])]
    assert len(pl.draft_prompts(r, None, 0, None)) == 16
    given = [pl.Prompt("a", [BOS, 1])]
    assert pl.draft_prompts(r, None, 0, given) is given
    assert pl.draft_prompts(r, 2, 0, given) == [
        pl.Prompt("a-0", [BOS, 1]),
        pl.Prompt("a-1", [BOS, 1]),
    ]


def test_models_without_bos_start_with_mask():
    r = ref()
    r.model.config = SimpleNamespace(**{**vars(r.model.config), "bos_id": None})
    assert pl.draft_prompts(r, 1, 0, None) == [pl.Prompt("s0-0", [MASK])]
