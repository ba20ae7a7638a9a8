"""Tokenizers and the `Codec`: text <-> model-vocabulary ids, including BOS/EOS/MASK.

Four kinds, each described by the `tokenizer` entry of a data manifest:
- `synthetic`: the topic-markov language, tokens written "w12 w5 ..." (BOS "<bos>").
- `bytes`: 256 byte ids + BOS 256, EOS 257, MASK 258 (vocab 259); UTF-8 in, UTF-8 out.
- `file`: any `tokenizers` tokenizer.json. Its own end-of-text token serves as BOS and EOS
  (GPT-2: `<|endoftext|>` 50256), [MASK] is appended after its vocabulary (GPT-2: 50257,
  vocab 50258), exactly as BD3-LM does.
- `bpe`: a byte-level BPE trained here on the training documents, then used like `file`.

Documents are encoded without special tokens (the packer appends EOS). Ids the tokenizer
file does not know (the appended [MASK]) are decoded by name. This module does not read
corpora or write data directories (see `sbdcli.data.sources`, `sbdcli.data`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sbdcli.errors import UserError

MASK_TEXT = "[MASK]"
EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]")
BOS_NAMES = ("<|endoftext|>", "<s>", "<|begin_of_text|>", "<bos>", "<|bos|>", "[CLS]")
MASK_NAMES = ("[MASK]", "<mask>", "<|mask|>")


def spec_sha256(obj: dict[str, Any]) -> str:
    """sha256 of a canonical JSON description (for tokenizers that have no file)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class Codec:
    """Text <-> ids for one vocabulary. Subclasses implement `encode_batch` and `_decode_run`."""

    kind: str = ""

    def __init__(self, vocab_size: int, mask_id: int, bos_id: int, eos_id: int | None) -> None:
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.bos_id = bos_id
        self.eos_id = eos_id

    def special_text(self) -> dict[int, str]:
        """How the special ids read in decoded text."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode documents without special tokens: (flat ids int32 (T,), lengths int64 (D,))."""
        raise NotImplementedError

    def _decode_run(self, ids: list[int]) -> str:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Ids of one text, without BOS/EOS."""
        flat, _ = self.encode_batch([text])
        return flat.tolist()

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ids; BOS/EOS/MASK appear by name unless `skip_special`."""
        names = self.special_text()
        parts: list[str] = []
        for is_special, group in itertools.groupby(ids, key=lambda t: int(t) in names):
            run = [int(t) for t in group]
            if not is_special:
                parts.append(self._decode_run(run))
            elif not skip_special:
                parts.append("".join(names[t] for t in run))
        return "".join(parts)

    def describe(self) -> dict[str, Any]:
        """The manifest's `tokenizer` entry (kind, sha256, ids, ...)."""
        raise NotImplementedError


# --------------------------------------------------------------------------- synthetic
class SyntheticCodec(Codec):
    """Content tokens 0..V-1 written as "w0".."w{V-1}"; BOS = V, MASK = V+1, no EOS."""

    kind = "synthetic"
    _word = re.compile(r"w(\d+)")

    def __init__(self, vocab: int) -> None:
        super().__init__(vocab + 2, mask_id=vocab + 1, bos_id=vocab, eos_id=None)
        self.vocab = vocab

    def special_text(self) -> dict[int, str]:
        return {self.bos_id: "<bos>", self.mask_id: MASK_TEXT}

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        by_name = {v: k for k, v in self.special_text().items()}
        rows: list[list[int]] = []
        for text in texts:
            row = []
            for word in text.split():
                match = self._word.fullmatch(word)
                if word in by_name:
                    row.append(by_name[word])
                elif match and int(match.group(1)) < self.vocab:
                    row.append(int(match.group(1)))
                else:
                    raise UserError(f"'{word}' is not a token of the synthetic language")
            rows.append(row)
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32)
        return flat, np.array([len(r) for r in rows], dtype=np.int64)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        names = self.special_text()
        words = []
        for t in map(int, ids):
            if t in names:
                if not skip_special:
                    words.append(names[t])
            else:
                words.append(f"w{t}" if 0 <= t < self.vocab else f"<unk:{t}>")
        return " ".join(words)

    def describe(self) -> dict[str, Any]:
        spec = {"kind": self.kind, "vocab": self.vocab, "text": "w<id>"}
        return {**spec, "sha256": spec_sha256(spec), "file": None}


# --------------------------------------------------------------------------- bytes
class ByteCodec(Codec):
    """UTF-8 bytes as ids 0..255; BOS 256, EOS 257, MASK 258."""

    kind = "bytes"

    def __init__(self) -> None:
        super().__init__(259, mask_id=258, bos_id=256, eos_id=257)

    def special_text(self) -> dict[int, str]:
        return {256: "<bos>", 257: "<eos>", 258: MASK_TEXT}

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = [t.encode("utf-8") for t in texts]
        flat = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.int32)
        return flat, np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))

    def _decode_run(self, ids: list[int]) -> str:
        data = bytes(t if 0 <= t < 256 else 63 for t in ids)  # out-of-range ids read as "?"
        return data.decode("utf-8", errors="replace")

    def describe(self) -> dict[str, Any]:
        spec = {"kind": self.kind, "bos_id": 256, "eos_id": 257, "mask_id": 258}
        return {**spec, "sha256": spec_sha256(spec), "file": None}


# --------------------------------------------------------------------------- tokenizers
class TokenizerCodec(Codec):
    """A `tokenizers` tokenizer plus the special ids chosen for it (see `from_tokenizer`)."""

    def __init__(self, tokenizer: Any, kind: str, info: dict[str, Any]) -> None:
        super().__init__(info["vocab_size"], info["mask_id"], info["bos_id"], info["eos_id"])
        self.tokenizer = tokenizer
        self.kind = kind
        self.info = info
        self._names = {int(k): v for k, v in info["special_text"].items()}
        # encode_batch_fast skips offsets (tokenizers >= 0.20): ~1.3x faster for our use.
        self._batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, kind: str, **extra: Any) -> TokenizerCodec:
        """Choose BOS/EOS/MASK: its end-of-text token for both BOS and EOS, [MASK] appended."""
        base = int(tokenizer.get_vocab_size(with_added_tokens=True))
        appended: list[str] = []

        def find(names: tuple[str, ...]) -> int | None:
            return next((i for n in names if (i := tokenizer.token_to_id(n)) is not None), None)

        def append(name: str) -> int:
            appended.append(name)
            return base + len(appended) - 1

        eos = find(EOS_NAMES)
        eos = append("<|endoftext|>") if eos is None else eos
        bos = find(BOS_NAMES)
        bos = eos if bos is None else bos
        mask = find(MASK_NAMES)
        mask = append(MASK_TEXT) if mask is None else mask
        names = {i: tokenizer.id_to_token(i) for i in {bos, eos, mask} if i < base}
        names.update({base + j: n for j, n in enumerate(appended)})
        info = {
            "base_vocab": base,
            "vocab_size": base + len(appended),
            "bos_id": bos,
            "eos_id": eos,
            "mask_id": mask,
            "appended": appended,
            "special_text": {str(k): v for k, v in sorted(names.items())},
            **extra,
        }
        return cls(tokenizer, kind, info)

    def special_text(self) -> dict[int, str]:
        return self._names

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return _ids_of(self._batch(list(texts), add_special_tokens=False))

    def _decode_run(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": "tokenizer.json", **self.info}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write tokenizer.json: the source file's exact bytes, or the trained tokenizer."""
        source = self.info.get("source")
        if source is not None and Path(source).is_file():
            shutil.copyfile(source, path)
        else:
            self.tokenizer.save(str(path), pretty=False)


def _ids_of(encodings: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Encodings -> (flat ids int32 (T,), lengths int64 (D,))."""
    lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, count=len(encodings))
    ids = itertools.chain.from_iterable(e.ids for e in encodings)
    return np.fromiter(ids, np.int32, count=int(lengths.sum())), lengths


# Worker processes (`sbdcli.data` runs a pool of them for large corpora): one tokenizer each,
# single-threaded, encoding sub-batches of WORKER_DOCS documents (cheapest per token).
WORKER_DOCS = 512
_worker_tokenizer: Any = None


def init_worker(tokenizer_json: str) -> None:
    """Process-pool initializer: load the tokenizer, one core per process."""
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`TokenizerCodec.encode_batch` inside a worker set up by `init_worker`."""
    tok = _worker_tokenizer
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    parts = [
        _ids_of(encode(texts[i : i + WORKER_DOCS], add_special_tokens=False))
        for i in range(0, len(texts), WORKER_DOCS)
    ]
    if not parts:
        return np.empty(0, np.int32), np.empty(0, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_tokenizer_file(path: str | os.PathLike[str]) -> Any:
    """Load a `tokenizers` tokenizer.json; a missing or malformed file is a UserError."""
    from tokenizers import Tokenizer

    p = Path(path)
    if p.is_dir() and (p / "tokenizer.json").is_file():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise UserError(f"tokenizer file not found: {p}")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{p} is not a valid tokenizer.json ({first})") from None


def train_bpe(docs: Iterable[str], vocab_size: int) -> Any:
    """Train a GPT-2-style byte-level BPE of `vocab_size` tokens (incl. `<|endoftext|>`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer)
    return tokenizer


def parse_bpe_size(spec: str) -> int:
    """`bpe:N` -> N (>= 257: the 256 byte symbols and `<|endoftext|>`)."""
    size = spec.split(":", 1)[1]
    if not size.isdigit() or int(size) < 257:
        raise UserError(f"--tokenizer {spec}: N must be an integer >= 257 (256 bytes + EOS)")
    return int(size)


def codec_from_manifest(manifest: dict[str, Any], directory: Path) -> Codec:
    """Rebuild the codec a data directory was written with (ids exactly as recorded)."""
    info = manifest.get("tokenizer") or {}
    kind = info.get("kind")
    if kind == "synthetic":
        return SyntheticCodec(int(info["vocab"]))
    if kind == "bytes":
        return ByteCodec()
    if kind in ("file", "bpe"):
        path = directory / "tokenizer.json"
        tokenizer = read_tokenizer_file(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if info.get("sha256") not in (None, digest):
            raise UserError(f"{path} differs from the tokenizer the data was written with")
        return TokenizerCodec(tokenizer, kind, {k: v for k, v in info.items() if k != "kind"})
    raise UserError(f"{directory}: manifest names an unknown tokenizer kind {kind!r}")
