"""`sbd prepare`: packing token streams into rows of a data directory (layout: datadir.py).

Text is packed the BD3-LM/MDLM "wrap" way: documents are tokenized without special tokens,
EOS is appended to each, everything is concatenated, and the stream is cut into rows by
the row format (`row_format`): `sbd` (default) = [BOS] + the next L-1 stream tokens (every
row BOS-first); `bd3lm` = the next L stream tokens, nothing inserted (BD3-LM's OpenWebText
rows, its `insert_train_special=False`; the reference's other wrapped data sets write
[BOS] + L-2 + [EOS]). The tail that does not fill a row is dropped and counted.
Validation = the last `val_docs` documents (held back in a FIFO while streaming) or every
(1/f)-th document for `val_fraction` f (evenly spread, needs no corpus size); each split
is packed apart.
Memory is bounded by one tokenization batch, one shard and the held-back validation
documents, not by the corpus. Output is built in a temporary directory and swapped in
only on success. Sources live in sources.py, tokenizers in codec.py, the language in
synthetic.py; this module does not print.
"""

from __future__ import annotations

import collections
import hashlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sbdcli.artifacts import atomic_dir, save_tensors, sha256_file
from sbdcli.config import DEFAULT_SHARD_TOKENS, ROW_FORMATS
from sbdcli.data.codec import (
    ByteCodec,
    Codec,
    SyntheticCodec,
    TokenizerCodec,
    encode_in_worker,
    init_worker,
    parse_bpe_size,
    read_tokenizer_file,
    train_bpe,
)
from sbdcli.data.datadir import MANIFEST, SPLITS, TOKENS_SCHEMA, build_manifest, write_manifest
from sbdcli.data.sources import Source
from sbdcli.data.synthetic import ORACLE_FILE, TopicMarkovSpec, build_oracle
from sbdcli.errors import UserError

__all__ = ["check_row_format", "derive_seed", "make_codec", "prepare_synthetic", "prepare_text"]

BATCH_CHARS = 1 << 20  # characters of text per tokenization batch
SYNTHETIC_CHUNK = 4096  # synthetic rows drawn per call
IN_PROCESS_THREADS = 2  # one batch in the Rust tokenizer while the last one becomes arrays


class PrepareReporter(Protocol):
    """What `prepare_text` reports: phases (with a unit and total) and advances."""

    def start(self, phase: str, total: int | None, unit: str) -> None: ...

    def advance(self, n: int) -> None: ...


# --------------------------------------------------------------------------- writing
class ShardWriter:
    """Collect rows (n, L) int32 of one split; write a shard each time `rows_per_shard` fill."""

    def __init__(self, directory: Path, split: str, seq_len: int, rows_per_shard: int) -> None:
        self.directory, self.split, self.seq_len = directory, split, seq_len
        self.rows_per_shard = max(1, rows_per_shard)
        self.buffer = np.empty((self.rows_per_shard, seq_len), dtype=np.int32)  # (S, L)
        self.filled = 0
        self.rows = 0
        self.shards: list[str] = []

    def add(self, rows: np.ndarray) -> None:
        """Append rows (n, L)."""
        start = 0
        while start < len(rows):
            take = min(len(rows) - start, self.rows_per_shard - self.filled)
            self.buffer[self.filled : self.filled + take] = rows[start : start + take]
            self.filled += take
            start += take
            if self.filled == self.rows_per_shard:
                self._flush()

    def _flush(self) -> None:
        if self.filled == 0:
            return
        name = f"{self.split}-{len(self.shards):05d}.safetensors"
        tokens = torch.from_numpy(self.buffer[: self.filled])  # (rows, L) int32, a view
        header = {"split": self.split, "shard": len(self.shards), "seq_len": self.seq_len}
        save_tensors(self.directory / name, {"tokens": tokens}, TOKENS_SCHEMA, header)
        self.shards.append(name)
        self.rows += self.filled
        self.filled = 0

    def close(self) -> None:
        self._flush()


class Packer:
    """Wrap packing: documents + EOS concatenated, rows = [BOS] + next L-1 stream tokens
    (`row_format` sbd) or the next L stream tokens (bd3lm)."""

    def __init__(
        self, writer: ShardWriter, bos_id: int, eos_id: int, row_format: str = "sbd"
    ) -> None:
        check_row_format(row_format)
        self.writer, self.bos_id, self.eos_id = writer, bos_id, eos_id
        self.lead = 1 if row_format == "sbd" else 0  # tokens inserted before the body
        self.body = writer.seq_len - self.lead
        self.carry = np.empty(0, dtype=np.int32)
        self.documents = 0
        self.stream_tokens = 0

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Add documents given as flat ids (T,) and their lengths (D,); EOS goes after each."""
        stream = np.insert(flat, np.cumsum(lengths), self.eos_id).astype(np.int32)  # (T + D,)
        self.documents += len(lengths)
        self.stream_tokens += len(stream)
        stream = np.concatenate([self.carry, stream])
        n = len(stream) // self.body
        if n:
            rows = np.empty((n, self.writer.seq_len), dtype=np.int32)  # (n, L)
            if self.lead:
                rows[:, 0] = self.bos_id
            rows[:, self.lead :] = stream[: n * self.body].reshape(n, self.body)
            self.writer.add(rows)
        self.carry = stream[n * self.body :].copy()

    def finish(self) -> dict[str, int]:
        """Write the last shard; the tail shorter than a row is dropped."""
        self.writer.close()
        rows = self.writer.rows
        return {
            "rows": rows,
            "documents": self.documents,
            "stream_tokens": self.stream_tokens,
            "dropped_tokens": len(self.carry),
        }


def assign_splits(
    docs: Iterable[str],
    val_docs: int | None,
    val_fraction: float | None,
    max_docs: int | None = None,
) -> Iterator[tuple[bool, str]]:
    """(is_val, doc) in corpus order for train; the last `val_docs` come out at the end.

    With `val_fraction` f, document i is validation iff floor((i+1) f) > floor(i f).
    """
    held: collections.deque[str] = collections.deque()
    for i, doc in enumerate(docs):
        if max_docs is not None and i >= max_docs:
            break
        if val_docs is not None:
            held.append(doc)
            if len(held) > val_docs:
                yield False, held.popleft()
        elif val_fraction:
            yield int((i + 1) * val_fraction) > int(i * val_fraction), doc
        else:
            yield False, doc
    for doc in held:
        yield True, doc


def _batches(pairs: Iterator[tuple[bool, str]]) -> Iterator[list[tuple[bool, str]]]:
    batch: list[tuple[bool, str]] = []
    chars = 0
    for pair in pairs:
        batch.append(pair)
        chars += len(pair[1])
        if chars >= BATCH_CHARS or len(batch) >= 8192:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


# --------------------------------------------------------------------------- text corpora
def make_codec(spec: str, split_docs: Callable[[], Iterator[tuple[bool, str]]]) -> Codec:
    """`bytes`, `bpe:N` (trained on the training documents) or a tokenizer.json path."""
    if spec == "bytes":
        return ByteCodec()
    if spec.startswith("bpe:"):
        size = parse_bpe_size(spec)
        docs = (doc for is_val, doc in split_docs() if not is_val)
        tokenizer = train_bpe(docs, size)
        return TokenizerCodec.from_tokenizer(tokenizer, "bpe", trained_vocab=size)
    path = Path(spec)
    tokenizer = read_tokenizer_file(path)
    source_file = path / "tokenizer.json" if path.is_dir() else path
    return TokenizerCodec.from_tokenizer(tokenizer, "file", source=str(source_file))


def prepare_text(
    out: str | os.PathLike[str],
    source: Source,
    tokenizer: str = "bytes",
    seq_len: int = 1024,
    *,
    val_docs: int | None = None,
    val_fraction: float | None = 0.05,
    max_docs: int | None = None,
    seed: int = 0,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    workers: int = 1,
    command: str = "",
    progress: PrepareReporter | None = None,
    row_format: str = "sbd",
) -> dict[str, Any]:
    """Tokenize, pack and write a text corpus into data directory `out`; return its manifest.

    `workers` > 1 tokenizes in that many processes; 1 (default) in this process with the
    tokenizer's own threads, which was faster on 2 cores (docs/benchmarks.md).
    `row_format`: `sbd` ([BOS] + L-1 tokens) or `bd3lm` (L raw tokens), see the module doc.
    """
    check_row_format(row_format)
    if workers < 1:
        raise UserError("`workers` must be >= 1")
    _check_common(seq_len, shard_tokens)
    if val_docs is not None and val_docs < 0:
        raise UserError("`val_docs` must be >= 0")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise UserError("`val_fraction` must lie in [0, 1)")
    _check_out(out)

    def split_docs(advance: Callable[[int], None] | None) -> Iterator[tuple[bool, str]]:
        return assign_splits(source.documents(advance), val_docs, val_fraction, max_docs)

    advance = progress.advance if progress is not None else None
    if progress is not None and tokenizer.startswith("bpe:"):
        progress.start("training BPE", source.total, source.unit)
    codec = make_codec(tokenizer, lambda: split_docs(advance))
    if codec.vocab_size > np.iinfo(np.int32).max:
        raise UserError(f"vocabulary of {codec.vocab_size} ids does not fit int32 shards")
    with atomic_dir(out) as tmp:
        if progress is not None:
            progress.start("tokenizing", source.total, source.unit)
        pairs = split_docs(advance)
        stats, seconds = _pack_text(tmp, codec, pairs, seq_len, shard_tokens, workers, row_format)
        if stats["train"]["documents"] + stats["val"]["documents"] == 0:
            raise UserError(f"empty corpus: no documents in {_source_name(source)}")
        if stats["train"]["rows"] == 0:
            tokens = stats["train"]["stream_tokens"]
            raise UserError(
                f"corpus too small: {tokens} training tokens fill no row of `seq_len` {seq_len}"
            )
        if isinstance(codec, TokenizerCodec):
            codec.save(tmp / "tokenizer.json")
            codec.info["sha256"] = sha256_file(tmp / "tokenizer.json")
        manifest = build_manifest(
            codec, seq_len, seed, command, source.describe(), stats, row_format
        )
        manifest["split"] = {
            "val_docs": val_docs,
            "val_fraction": val_fraction if val_docs is None else None,
        }
        manifest["seconds"] = round(seconds, 3)
        write_manifest(tmp, manifest)
    return manifest


def _pack_text(
    tmp: Path,
    codec: Codec,
    pairs: Iterator[tuple[bool, str]],
    seq_len: int,
    shard_tokens: int,
    workers: int,
    row_format: str = "sbd",
) -> tuple[dict[str, dict[str, Any]], float]:
    """Tokenize batches of (is_val, doc) and pack train and val streams apart; time it.

    Batches are tokenized elsewhere (worker processes, or one thread running the Rust
    tokenizer's own threads) while this thread reads ahead and packs finished batches in
    order; at most workers + 1 batches are in flight.
    """
    assert codec.eos_id is not None
    rows_per_shard = max(1, shard_tokens // seq_len)
    packers = {
        s: Packer(
            ShardWriter(tmp, s, seq_len, rows_per_shard), codec.bos_id, codec.eos_id, row_format
        )
        for s in SPLITS
    }
    in_flight: collections.deque[tuple[np.ndarray, Future]] = collections.deque()
    pool, encode = _encoder(codec, workers)
    started = time.perf_counter()
    with pool:
        for batch in _batches(pairs):
            is_val = np.fromiter((v for v, _ in batch), dtype=bool, count=len(batch))
            in_flight.append((is_val, pool.submit(encode, [d for _, d in batch])))
            while len(in_flight) > max(2, workers):
                is_val, future = in_flight.popleft()
                _pack_batch(packers, is_val, *future.result())
        for is_val, future in in_flight:
            _pack_batch(packers, is_val, *future.result())
    stats: dict[str, dict[str, Any]] = {}
    for split, packer in packers.items():
        stats[split] = packer.finish()
        stats[split]["shards"] = packer.writer.shards
    return stats, time.perf_counter() - started


def _encoder(codec: Codec, workers: int) -> tuple[Executor, Callable[..., Any]]:
    """Worker processes for `tokenizers` codecs when workers > 1, else one thread.

    Processes scale where the tokenizer's own threads do not: each converts its ids to
    arrays without sharing a GIL, and each is scheduled like any process on a busy machine.
    """
    if workers > 1 and isinstance(codec, TokenizerCodec):
        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded parent
            initializer=init_worker,
            initargs=(codec.tokenizer.to_str(),),
        )
        return pool, encode_in_worker
    return ThreadPoolExecutor(max_workers=IN_PROCESS_THREADS), codec.encode_batch


def _pack_batch(
    packers: dict[str, Packer], is_val: np.ndarray, flat: np.ndarray, lengths: np.ndarray
) -> None:
    """Send each document of an encoded batch (flat ids (T,), lengths (D,)) to its split."""
    if not is_val.any():
        packers["train"].add(flat, lengths)
        return
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for split, keep in (("train", ~is_val), ("val", is_val)):
        if keep.any():
            parts = [flat[starts[i] : starts[i + 1]] for i in np.flatnonzero(keep)]
            packers[split].add(np.concatenate(parts), lengths[keep])


def _source_name(source: Source) -> str:
    info = source.describe()
    return ", ".join(info.get("paths", [])) or str(info.get("name", "the source"))


# --------------------------------------------------------------------------- synthetic
def prepare_synthetic(
    out: str | os.PathLike[str],
    spec: Any = None,
    seq_len: int = 128,
    *,
    num_train: int = 16384,
    num_val: int = 1024,
    seed: int = 0,
    floor_samples: int = 4096,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    command: str = "",
) -> dict[str, Any]:
    """Write the topic-markov language (one document per row) and its oracle into `out`."""
    spec = spec or TopicMarkovSpec()
    _check_common(seq_len, shard_tokens)
    if num_train < 1 or num_val < 0 or floor_samples < 1:
        raise UserError("--num-train and --oracle-samples must be >= 1, --num-val >= 0")
    _check_out(out)
    # The sampler's per-step ops are small ((4096, V) gathers): one thread is ~10x faster
    # than two on a busy machine. Restore the caller's setting afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _write_synthetic(
            Path(out), spec, seq_len, num_train, num_val, seed, floor_samples, shard_tokens, command
        )
    finally:
        torch.set_num_threads(threads)


def _write_synthetic(
    out: Path,
    spec: Any,
    seq_len: int,
    num_train: int,
    num_val: int,
    seed: int,
    floor_samples: int,
    shard_tokens: int,
    command: str,
) -> dict[str, Any]:
    started = time.perf_counter()
    oracle = build_oracle(spec, derive_seed(seed, "oracle"))
    codec = SyntheticCodec(spec.vocab)
    stats: dict[str, dict[str, Any]] = {}
    with atomic_dir(out) as tmp:
        for split, n in (("train", num_train), ("val", num_val)):
            gen = torch.Generator().manual_seed(derive_seed(seed, split))
            writer = ShardWriter(tmp, split, seq_len, shard_tokens // seq_len)
            for start in range(0, n, SYNTHETIC_CHUNK):  # fixed chunks: shard size never
                count = min(SYNTHETIC_CHUNK, n - start)  # changes the rows drawn
                writer.add(oracle.sample(count, seq_len, gen).to(torch.int32).numpy())
            writer.close()
            stats[split] = {"rows": writer.rows, "documents": writer.rows, "shards": writer.shards}
        oracle.save(tmp / ORACLE_FILE)
        floor_gen = torch.Generator().manual_seed(derive_seed(seed, "floor"))
        floor = oracle.reference_numbers(floor_samples, seq_len, floor_gen)
        manifest = build_manifest(codec, seq_len, seed, command, _synthetic_source(spec), stats)
        manifest["oracle"] = {"file": ORACLE_FILE, "sha256": sha256_file(tmp / ORACLE_FILE)}
        manifest["oracle"].update(floor)
        manifest["seconds"] = round(time.perf_counter() - started, 3)
        write_manifest(tmp, manifest)
    return manifest


def _synthetic_source(spec: Any) -> dict[str, Any]:
    return {"kind": "synthetic", "name": "topic-markov", **spec.to_dict()}


def derive_seed(seed: int, tag: str) -> int:
    """An independent 63-bit seed per purpose, so e.g. --num-train never changes val."""
    digest = hashlib.sha256(f"sbd:{seed}:{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# --------------------------------------------------------------------------- manifest
def check_row_format(row_format: str) -> None:
    """Refuse an unknown row format."""
    if row_format not in ROW_FORMATS:
        raise UserError(f"`row_format` must be one of {', '.join(ROW_FORMATS)}, got {row_format!r}")


def _check_common(seq_len: int, shard_tokens: int) -> None:
    if seq_len < 2:
        raise UserError(f"`seq_len` must be >= 2 (got {seq_len})")
    if shard_tokens < 1:
        raise UserError("`shard_tokens` must be >= 1")


def _check_out(out: str | os.PathLike[str]) -> None:
    """Refuse to replace anything but an earlier data directory (or an empty folder)."""
    p = Path(out)
    if p.is_file() or p.is_symlink():
        raise UserError(f"`out` {p} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()) and not (p / MANIFEST).is_file():
        raise UserError(f"`out` {p} exists and is not an sbd data directory; not replacing it")
