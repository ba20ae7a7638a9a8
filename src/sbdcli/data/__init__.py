"""Data: document sources, tokenizers, the synthetic language, packing, data directories.

- sources.py: documents from text files, JSONL or `datasets` (hub names or local files);
- codec.py: tokenizers (bytes, `tokenizer.json`, trained BPE) and the `Codec` (text <-> ids);
- synthetic.py: the embedded topic-markov language with its exact likelihood (the oracle);
- prepare.py: `sbd prepare`, packing token streams into sharded rows;
- datadir.py: a data directory on disk (manifest, rows, codec).

Not here: models, training, sampling. Imports artifacts, config and errors only.
"""

from __future__ import annotations

from sbdcli.data.codec import (
    Codec,
)
from sbdcli.data.datadir import (
    TokenRows,
    load_codec,
    load_split,
    read_data_manifest,
    read_manifest,
)
from sbdcli.data.prepare import (
    Packer,
    ShardWriter,
    assign_splits,
    make_codec,
    prepare_synthetic,
    prepare_text,
)

__all__ = [
    "Codec",
    "Packer",
    "ShardWriter",
    "TokenRows",
    "assign_splits",
    "load_codec",
    "load_split",
    "make_codec",
    "prepare_synthetic",
    "prepare_text",
    "read_data_manifest",
    "read_manifest",
]
