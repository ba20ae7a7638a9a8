"""Record-level stages: what `sbd draft`, `remask`, `revise` and `generate` do to records.

- stages.py: draft, remask and revise batches of records, prompts, the K-stage plan;
- modelref.py: which model a stage uses and the name records give it.

Not here: the math on token tensors (diffusion/) or option parsing (cli/).
"""

from __future__ import annotations

from sbdcli.pipeline.modelref import (
    ModelCache,
    ModelRef,
    default_model_path,
    load_model_ref,
    resolve_device,
)
from sbdcli.pipeline.stages import (
    Prompt,
    RemaskConfig,
    StagePlan,
    batched,
    check_records,
    draft_batch,
    draft_prompts,
    generate_batch,
    parse_block,
    parse_stages,
    read_prompts,
    remask_batch,
    revise_batch,
)

__all__ = [
    "ModelCache",
    "ModelRef",
    "Prompt",
    "RemaskConfig",
    "StagePlan",
    "batched",
    "check_records",
    "default_model_path",
    "draft_batch",
    "draft_prompts",
    "generate_batch",
    "load_model_ref",
    "parse_block",
    "parse_stages",
    "read_prompts",
    "remask_batch",
    "resolve_device",
    "revise_batch",
]
