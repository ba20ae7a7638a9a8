"""Tests for data/markers.py: mask markers become [MASK] ids at the right places, counts are
checked, and a tokenizer that does not give the text back byte for byte is refused."""

from __future__ import annotations

import pytest

from sbdcli.data.codec import ByteCodec, SyntheticCodec, TokenizerCodec, train_bpe
from sbdcli.data.markers import encode_marked, split_markers
from sbdcli.errors import UserError


def test_split_markers_counts_the_default_and_counted_forms():
    pieces, counts = split_markers("a [MASK] b [MASK:3] c", "[MASK]", 100)
    assert pieces == ["a ", " b ", " c"]
    assert counts == [1, 3]


@pytest.mark.parametrize(
    ("marker", "text", "counts"),
    [("<blank>", "x <blank:2> y <blank>", [2, 1]), ("@@", "x @@ y @@:4", [1, 4])],
)
def test_custom_markers(marker, text, counts):
    assert split_markers(text, marker, 100)[1] == counts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a [MASK:0] b", "asks for 0 tokens"),
        ("a [MASK:100000] b", "more than the limit of 64"),
        ("a [MASK:x] b", "positive integer"),
    ],
)
def test_bad_counts_are_refused(text, message):
    with pytest.raises(UserError, match=message):
        split_markers(text, "[MASK]", 64)


def test_bytes_infill_ids_and_positions():
    codec = ByteCodec()
    got = encode_marked(codec, "hé [MASK:2]!", "[MASK]", 64, "t")
    assert got.ids == [*"hé ".encode(), 258, 258, ord("!")]
    assert got.masked == [4, 5]
    assert got.n_markers == 1


def test_synthetic_words_around_markers_and_whitespace():
    codec = SyntheticCodec(12)
    got = encode_marked(codec, "w1 [MASK] w3\n", "[MASK]", 64, "t")
    assert got.ids == [1, 13, 3] and got.masked == [1]
    with pytest.raises(UserError, match="byte for byte .*at character 3"):
        encode_marked(codec, "w1  w2", "[MASK]", 64, "t")
    assert encode_marked(codec, "w1  w2", "[MASK]", 64, "t", exact=False).ids == [1, 2]


def test_a_normalising_tokenizer_is_reported():
    from tokenizers import normalizers

    tok = train_bpe(["hello world"] * 4, 300)
    tok.normalizer = normalizers.Lowercase()
    codec = TokenizerCodec.from_tokenizer(tok, "bpe")
    assert encode_marked(codec, "hello [MASK] world", "[MASK]", 64, "t").masked
    with pytest.raises(UserError, match=r"text 7: .*'Hello' comes back as 'hello'"):
        encode_marked(codec, "Hello", "[MASK]", 64, "text 7")


def test_the_mask_token_spelled_outside_a_marker_is_refused():
    with pytest.raises(UserError, match="spells the \\[MASK\\] token"):
        encode_marked(SyntheticCodec(12), "w1 [MASK] w2", "<blank>", 64, "t")


def test_text_longer_than_the_limit_is_refused():
    with pytest.raises(UserError, match="more than the limit of 8"):
        encode_marked(ByteCodec(), "abcd [MASK:4]", "[MASK]", 8, "t")
