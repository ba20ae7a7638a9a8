"""The BD3-LM denoiser and its checkpoints.

- denoiser.py: the DiT with adaLN-Zero and rotary positions; training and sampling passes;
- attention.py: block-diffusion masks, SDPA / FlexAttention kernels, the exact KV cache;
- checkpoint.py: loading and saving sbd runs and the BD3-LM / MDLM Hugging Face layout
  (safetensors only, nothing is unpickled).

Not here: losses, noise or sampling loops (diffusion/). Imports artifacts, config, errors.
"""

from __future__ import annotations

from sbdcli.model.checkpoint import (
    export_bd3lm,
    hf_model_config,
    load_model,
    resolve_device,
    save_sbd_model,
)
from sbdcli.model.denoiser import (
    Denoiser,
)

__all__ = [
    "Denoiser",
    "export_bd3lm",
    "hf_model_config",
    "load_model",
    "resolve_device",
    "save_sbd_model",
]
