"""Record-level stages: what `sbd draft`, `remask`, `revise` and `generate` do to records.

- prompts.py: `Prompt`, reading a prompts file, the prompts (and record ids) a draft samples;
- stages.py: draft, remask and revise a batch of records; `check_records`, `batched`;
- plans.py: the K-stage plan (`parse_stages`, `StagePlan`) and `generate_batch`;
- modelref.py: which model a stage uses and the name records give it;
- sweep.py: whole sample sets (draft n, remask and revise a set), reusing finished files.

Records in and out follow docs/records.md (`sbdcli.artifacts.Record`); what the stages do
is explained in docs/sampling.md. Not here: the math on token tensors (diffusion/), file
formats (artifacts/), option parsing and printing (cli/).
"""

from __future__ import annotations

from sbdcli.config import RemaskConfig
from sbdcli.pipeline.modelref import (
    ModelCache,
    ModelRef,
    default_model_path,
    load_model_ref,
    resolve_device,
)
from sbdcli.pipeline.plans import StagePlan, generate_batch, parse_block, parse_stages
from sbdcli.pipeline.prompts import (
    Prompt,
    check_record_count,
    draft_prompts,
    read_prompts,
    text_prompts,
)
from sbdcli.pipeline.stages import (
    OnCall,
    OnEngine,
    Seeds,
    batched,
    check_records,
    draft_batch,
    remask_batch,
    revise_batch,
)
from sbdcli.pipeline.sweep import draft_set, finished, reuse_or_write, revise_set

__all__ = [
    "ModelCache",
    "ModelRef",
    "OnCall",
    "OnEngine",
    "Prompt",
    "RemaskConfig",
    "Seeds",
    "StagePlan",
    "batched",
    "check_record_count",
    "check_records",
    "default_model_path",
    "draft_batch",
    "draft_prompts",
    "draft_set",
    "finished",
    "generate_batch",
    "load_model_ref",
    "parse_block",
    "parse_stages",
    "read_prompts",
    "remask_batch",
    "resolve_device",
    "reuse_or_write",
    "revise_batch",
    "revise_set",
    "text_prompts",
]
