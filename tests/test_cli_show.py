"""Tests for `sbd show` (cli/show.py) and the views it renders (evaluate/views.py): records of
every stage kind in colour and plain, --stage, --ids, -n, --tokens, and one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fake_model import one_thread  # noqa: F401 (autouse fixture)
from report_helpers import make_records, read_jsonl, working_dir
from sbdcli.cli import main
from sbdcli.data.codec import SyntheticCodec
from sbdcli.evaluate import views as vw

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("show")
    return root, make_records(root)


def show(root: Path, capsys, *argv: str) -> tuple[int, str, str]:
    """`sbd show ARGV` run in `root`: (exit code, stdout, stderr)."""
    capsys.readouterr()
    with working_dir(root), pytest.raises(SystemExit) as info:
        main(["show", *argv])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def blocks(out: str) -> list[tuple[str, str]]:
    """(header, text) of every record in a plain `sbd show` output."""
    lines = out.splitlines()
    assert lines[0].startswith("marks:")
    rest = [ln for ln in lines[1:] if ln and not ln.startswith("note:")]
    return list(zip(rest[::2], rest[1::2], strict=True))


def words(text: str) -> list[str]:
    return text.replace(" | ", " ").split(" ")


def test_draft_plain_shows_the_decoded_text_unmarked(made, capsys):
    root, f = made
    code, out, _ = show(root, capsys, "draft.jsonl")  # stdout is not a terminal: plain
    assert code == 0
    recs = read_jsonl(f["draft"])
    shown = blocks(out)
    assert len(shown) == len(recs)
    codec = SyntheticCodec(10)
    for (head, text), rec in zip(shown, recs, strict=True):
        assert head.startswith(f"{rec['id']}  stage 1/1 draft · nfe {rec['nfe']}")
        assert text == codec.decode(rec["tokens"])
        assert not re.search(r"[\[\]{}]", text)
    assert not ANSI.search(out)


def test_remasked_positions_are_bracketed(made, capsys):
    root, f = made
    _, out, _ = show(root, capsys, "--no-color", "remask.jsonl")
    for (head, text), rec in zip(blocks(out), read_jsonl(f["remask"]), strict=True):
        marked = [i for i, w in enumerate(words(text)) if w.startswith("[")]
        assert marked == rec["masked"] and marked
        assert f"{len(rec['masked'])} masked" in head


def test_revised_tokens_show_the_draft_token_they_replaced(made, capsys):
    root, f = made
    _, out, _ = show(root, capsys, "revise.jsonl")
    drafts = {r["id"]: r for r in read_jsonl(f["draft"])}
    codec = SyntheticCodec(10)
    n_changed = 0
    for (head, text), rec in zip(blocks(out), read_jsonl(f["revise"]), strict=True):
        draft = drafts[rec["id"]]
        positions = rec["stages"][-1]["positions"]
        for i, w in enumerate(words(text)):
            old, new = codec.decode([draft["tokens"][i]]), codec.decode([rec["tokens"][i]])
            if i not in positions:
                assert w == new
            elif old != new:
                assert w == f"{{{old}->{new}}}"
                n_changed += 1
            else:
                assert w == f"{{{new}}}"
        assert f"{len(positions)} revised" in head
    assert n_changed > 0


def test_stage_rebuilds_the_earlier_states(made, capsys):
    root, _ = made
    texts = {name: [t for _, t in blocks(show(root, capsys, name)[1])] for name in
             ("draft.jsonl", "remask.jsonl")}  # fmt: skip
    assert [t for _, t in blocks(show(root, capsys, "revise.jsonl", "--stage", "1")[1])] == (
        texts["draft.jsonl"]
    )
    _, out, _ = show(root, capsys, "revise.jsonl", "--stage", "2")
    assert [t for _, t in blocks(out)] == texts["remask.jsonl"]
    assert blocks(out)[0][0].split("  ")[1].startswith("stage 2/3 remask")


def test_multi_stage_record_every_stage(made, capsys):
    root, f = made
    rec = read_jsonl(f["multi"])[0]
    assert [s["name"] for s in rec["stages"]] == ["draft", "remask", "revise", "remask", "revise"]
    pieces = vw.Pieces(SyntheticCodec(10))
    views = [vw.record_view(rec, 0, pieces, k) for k in range(1, 6)]
    assert views[-1].text() == SyntheticCodec(10).decode(rec["tokens"])
    # each remask marks what the following revise regenerated
    for k in (2, 4):
        assert [t.pos for t in views[k - 1].tokens if t.masked] == rec["stages"][k]["positions"]
    # stage 3's tokens are those the second revise replaced
    second = rec["stages"][4]
    for p, old in zip(second["positions"], second["replaced"], strict=True):
        assert views[2].tokens[p].id == old
    writers = {t.stage for t in views[-1].tokens if t.revised}
    assert writers <= {3, 5} and 5 in writers
    code, out, _ = show(root, capsys, "generate.jsonl", "--stage", "4", "-n", "1")
    assert code == 0 and "stage 4/5 remask" in out


def test_prompt_is_set_apart(made, capsys):
    root, f = made
    _, out, _ = show(root, capsys, "prompted.jsonl")
    for _, text in blocks(out):
        assert text.startswith("<bos> w1 w2 w3 | ")
    view = vw.record_view(read_jsonl(f["prompted"])[0], 0, vw.Pieces(SyntheticCodec(10)))
    assert [t.prompt for t in view.tokens[:5]] == [True] * 4 + [False]
    assert all(t.stage is None for t in view.tokens[:4])


def test_colour_marks_the_same_positions(made, capsys):
    root, f = made
    _, out, _ = show(root, capsys, "--color", "revise.jsonl", "-n", "1")
    assert ANSI.search(out)
    plain = ANSI.sub("", out)
    assert "confidence" in plain.splitlines()[0] and "0.8–1" in plain.splitlines()[0]
    assert ANSI.sub("", out.splitlines()[-1]) == "<bos> " + " ".join(
        w.strip("{}").split("->")[0] + w.strip("{}").split("->")[-1] if "->" in w
        else w.strip("{}")
        for w in words(blocks(show(root, capsys, "revise.jsonl", "-n", "1")[1])[0][1])[1:]
    )  # fmt: skip
    rec = read_jsonl(f["revise"])[0]
    view = vw.record_view(rec, 0, vw.Pieces(SyntheticCodec(10)))
    body = out.splitlines()[-1]
    assert body.count("\x1b[2;9m") == view.n_changed > 0  # each draft token struck through
    for tok in view.tokens[1:]:  # each token on its confidence bin's background
        r, g, b = bytes.fromhex(vw.CONFIDENCE_COLOURS[vw.confidence_bin(tok.confidence)][1:])
        assert f"48;2;{r};{g};{b}m{tok.piece}" in body


def test_plain_writes_the_samples_alone_one_per_line(made, capsys):
    root, f = made
    codec = SyntheticCodec(10)
    code, out, err = show(root, capsys, "--plain", "revise.jsonl")
    assert code == 0 and err == ""
    recs = read_jsonl(f["revise"])
    assert out.splitlines() == [codec.decode(r["tokens"][1:]) for r in recs]
    _, out, _ = show(root, capsys, "--plain", "revise.jsonl", "--stage", "1", "-n", "1")
    assert out == codec.decode(read_jsonl(f["draft"])[0]["tokens"][1:]) + "\n"
    _, out, _ = show(root, capsys, "--plain", "--tokens", "draft.jsonl", "-n", "1")
    assert out.split() == [str(t) for t in read_jsonl(f["draft"])[0]["tokens"]]
    code, _, err = show(root, capsys, "--plain", "--color", "draft.jsonl")
    assert code == 2 and err.count("\n") == 1 and "--plain" in err


def _hue(rgb: tuple[int, int, int]) -> float:
    import colorsys

    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360


def test_sixteen_colour_terminals_get_a_monotonic_scale(made, monkeypatch, capsys):
    """Red -> yellow -> green in order on a 16-colour terminal; rich's own mapping of the
    exact colours is not (a bright red, hue ~0, after a red, then a yellow)."""
    import sys

    from rich.color import Color, ColorSystem
    from rich.terminal_theme import DEFAULT_TERMINAL_THEME

    from sbdcli.cli.show import STANDARD_COLOURS

    def hues(colours) -> list[float]:
        out = []
        for c in colours:
            number = Color.parse(c).downgrade(ColorSystem.STANDARD).number
            out.append(_hue(tuple(DEFAULT_TERMINAL_THEME.ansi_colors[number])))
        return out

    assert hues(STANDARD_COLOURS) == sorted(hues(STANDARD_COLOURS))
    downgraded = [
        Color.parse(c).downgrade(ColorSystem.STANDARD).name for c in vw.CONFIDENCE_COLOURS
    ]
    assert downgraded != list(STANDARD_COLOURS)
    root, _ = made
    for name in ("COLORTERM", "NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    _, out, _ = show(root, capsys, "draft.jsonl", "-n", "1")
    legend = out.splitlines()[0]
    assert re.findall(r"\x1b\[30;(\d+)m", legend) == ["41", "43", "103", "102", "42"]


def test_tokens_ids_and_n_pick_what_is_shown(made, capsys):
    root, f = made
    recs = read_jsonl(f["draft"])
    _, out, _ = show(root, capsys, "draft.jsonl", "--tokens", "--ids", f"{recs[2]['id']}")
    (head, text), = blocks(out)  # fmt: skip
    assert head.startswith(recs[2]["id"]) and text == " ".join(map(str, recs[2]["tokens"]))
    _, out, _ = show(root, capsys, "draft.jsonl", "-n", "2")
    assert len(blocks(out)) == 2
    code, _, err = show(root, capsys, "draft.jsonl", "--ids", "nope")
    assert code == 2 and "no record with id nope" in err


def test_with_eos_and_a_text_tokenizer(tmp_path, capsys):
    """Byte-level records with EOS: pieces joined without spaces, EOS shown by name."""
    data = tmp_path / "bytes"
    data.mkdir()
    manifest = {"schema": "sbd.data", "schema_version": 1, "tokenizer": {"kind": "bytes"},
                "vocab_size": 259, "mask_id": 258, "bos_id": 256, "eos_id": 257}  # fmt: skip
    (data / "manifest.json").write_text(json.dumps(manifest))
    rec = {"id": "e", "tokens": [256, 104, 105, 257], "confidence": [1.0, 0.5, 0.9, 0.3],
           "masked": [], "prompt_len": 1, "nfe": 3, "stop": 3,
           "stages": [{"name": "draft", "vocab_size": 259, "mask_id": 258, "bos_id": 256}],
           "text": "hi<eos>", "model": "nowhere@unknown"}  # fmt: skip
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    code, out, _ = show(tmp_path, capsys, str(path), "--data", str(data))
    assert code == 0 and blocks(out)[0][1] == "<bos>hi<eos>"
    view = vw.record_view(rec, 0, vw.Pieces(vw.find_codec(None, data, [])[0]))
    assert [t.special for t in view.tokens] == [True, False, False, True]


def test_a_record_with_only_tokens_and_confidence_is_shown(tmp_path, capsys):
    path = tmp_path / "bare.jsonl"
    path.write_text(json.dumps({"tokens": [5, 6, 7], "confidence": [0.1, 0.5, 0.9]}) + "\n")
    code, out, err = show(tmp_path, capsys, str(path))
    assert code == 0
    assert blocks(out) == [("#0  stage 0/0 (no stages)", "5 6 7")]
    assert "no tokenizer found" in err


def test_an_older_revise_entry_is_shown_with_a_note(made, tmp_path, capsys):
    root, f = made
    rec = read_jsonl(f["revise"])[0]
    for key in ("positions", "replaced", "replaced_confidence"):
        del rec["stages"][-1][key]
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    code, out, _ = show(root, capsys, str(path))
    assert code == 0 and "note: revise stage 3 lists no positions" in out
    assert "{" not in blocks(out)[0][1]
    code, _, err = show(root, capsys, str(path), "--stage", "1")
    assert code == 2 and "does not list what it replaced" in err


def one_line_error(root: Path, capsys, *argv: str) -> str:
    code, _, err = show(root, capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("sbd: error:")
    return lines[0]


def test_bad_input_is_one_line(made, tmp_path, capsys):
    root, f = made
    rec = read_jsonl(f["draft"])[0]
    no_conf = tmp_path / "noconf.jsonl"
    no_conf.write_text(json.dumps({k: v for k, v in rec.items() if k != "confidence"}) + "\n")
    assert "no 'confidence'" in one_line_error(root, capsys, str(no_conf))
    assert "--stage 4" in one_line_error(root, capsys, "revise.jsonl", "--stage", "4")
    assert "has 3 stages" in one_line_error(root, capsys, "revise.jsonl", "--stage", "4")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "no records" in one_line_error(root, capsys, str(empty))
    assert "not found" in one_line_error(root, capsys, str(tmp_path / "x.jsonl"))
    cut = tmp_path / "cut.jsonl"
    cut.write_text(f["draft"].read_text()[:100])
    assert "not valid JSON" in one_line_error(root, capsys, str(cut))


def test_a_tokenizer_that_does_not_match_the_ids_is_refused(made, tmp_path, capsys):
    root, _ = made
    other = tmp_path / "other"
    other.mkdir()
    manifest = {"schema": "sbd.data", "schema_version": 1, "tokenizer": {"kind": "bytes"}}
    (other / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(root, capsys, "draft.jsonl", "--data", str(other))
    assert "another tokenizer" in line and "vocab_size 12" in line
    # no draft entry to compare: the ids themselves are checked
    rec = {"tokens": [10, 400], "confidence": [1.0, 0.5]}
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    assert "outside the vocabulary" in one_line_error(root, capsys, str(path), "-m", "run")


def test_show_reads_a_pipe(made):
    """`... | sbd remask | sbd show`: records from stdin, plain (stdout is a pipe)."""
    import os
    import subprocess
    import sys

    root, f = made
    sbd = f"{sys.executable} -m sbdcli"
    cmd = f"{sbd} remask --gamma 0.25 -i draft.jsonl | {sbd} show"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, shell=True, cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shown = blocks(done.stdout)
    assert len(shown) == len(read_jsonl(f["draft"]))
    assert all("[" in text and "masked" in head for head, text in shown)


def test_a_bundle_shows_as_its_jsonl(made, tmp_path, capsys):
    from sbdcli.artifacts import save_record_bundle

    root, f = made
    bundle = tmp_path / "revise.safetensors"
    save_record_bundle(bundle, read_jsonl(f["revise"]))
    assert show(root, capsys, str(bundle))[1] == show(root, capsys, "revise.jsonl")[1]
