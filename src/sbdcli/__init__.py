"""sbd: Structural Block Diffusion for block-diffusion language models.

The library is the product and the `sbd` command is its client. This module holds
the version and the small public API; it imports nothing heavy at import time.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["UserError", "__version__", "load_model"]

from sbdcli.errors import UserError


def load_model(path: str, device: str = "cpu") -> Any:
    """Load an sbd run directory or a BD3-LM/MDLM checkpoint directory in eval mode.

    The returned denoiser carries its `.config` (a `ModelConfig`).
    """
    from sbdcli.model.checkpoint import load_model as _load

    return _load(path, device=device)
