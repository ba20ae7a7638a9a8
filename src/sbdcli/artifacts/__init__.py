"""File formats, and nothing else: what sbd writes and reads, never what it means.

- files.py: atomic writes (temporary name, then rename), JSON, JSONL streams, hashing;
- tensors.py: safetensors with a schema name, a version and a JSON header;
- records.py: the sample record (docs/records.md) as JSONL streams or `.safetensors` bundles;
- rundir.py: the whole run directory layout (`RUN/config.json`, metrics, state, `latest`);
- printable.py: text read from files (ids, tokens, names) with control characters made visible.

Imports only config and errors from sbd; no model, no sampling, no torch models.
"""

from __future__ import annotations

from sbdcli.artifacts.files import (
    JsonlWriter,
    atomic_dir,
    atomic_file,
    atomic_path,
    check_output_dir,
    check_output_path,
    is_json_document,
    parse_json_line,
    read_input_bytes,
    read_json,
    read_jsonl,
    sha256_file,
    write_json,
)
from sbdcli.artifacts.printable import visible
from sbdcli.artifacts.records import (
    RECORD_SCHEMA,
    RECORD_SCHEMA_VERSION,
    Record,
    RecordWriter,
    StageEntry,
    group_by_length,
    load_record_bundle,
    read_records,
    save_record_bundle,
    validate_record,
    write_records,
)
from sbdcli.artifacts.rundir import (
    RunDir,
    parse_model_field,
    run_dir_of_records,
)
from sbdcli.artifacts.tensors import (
    load_tensors,
    read_tensor_metadata,
    save_tensors,
)

__all__ = [
    "RECORD_SCHEMA",
    "RECORD_SCHEMA_VERSION",
    "JsonlWriter",
    "Record",
    "RecordWriter",
    "RunDir",
    "StageEntry",
    "atomic_dir",
    "atomic_file",
    "atomic_path",
    "check_output_dir",
    "check_output_path",
    "group_by_length",
    "is_json_document",
    "load_record_bundle",
    "load_tensors",
    "parse_json_line",
    "parse_model_field",
    "read_input_bytes",
    "read_json",
    "read_jsonl",
    "read_records",
    "read_tensor_metadata",
    "run_dir_of_records",
    "save_record_bundle",
    "save_tensors",
    "sha256_file",
    "validate_record",
    "visible",
    "write_json",
    "write_records",
]
