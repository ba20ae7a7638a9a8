"""Checkpoint loading and saving: sbd checkpoints and the BD3-LM / MDLM Hugging Face layout.

What is here
- `load_model(path, device)`: an sbd run directory, an sbd `model.safetensors`, or a
  BD3-LM / MDLM Hugging Face directory (config.json + model.safetensors with `backbone.*`
  keys, e.g. kuleshov-group/bd3lm-owt-block_size4) -> `Denoiser` in eval mode.
- `save_sbd_model(model, path, header)`: `model.safetensors` with schema "sbd.model" and the
  model config in its header.
- `export_bd3lm(model_or_run, out_dir)`: writes the BD3-LM Hugging Face layout back.

Safetensors only: pickle checkpoints (`pytorch_model.bin`, `.ckpt`) are refused. What is not
here: the network itself (model.py) and training state (train.py).

Time conditioning. The flag (`time_conditioning`) decides which function the weights compute,
but the weights alone cannot tell it: `sigma_map` exists either way (without time
conditioning it is fed sigma = 0 and its output is a learned constant). So every record of
the flag that travels with the weights is checked against the flag in force, and a
disagreement is refused: an sbd run's config.json against its model.safetensors header, and
a BD3-LM directory's config.json against the flag `export_bd3lm` stores in the safetensors
metadata. config.json's flag must be a JSON boolean.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from sbdcli import artifacts
from sbdcli.config import ModelConfig
from sbdcli.errors import UserError
from sbdcli.model.denoiser import Denoiser

__all__ = ["export_bd3lm", "hf_model_config", "load_model", "resolve_device", "save_sbd_model"]

SBD_SCHEMA = "sbd.model"
HF_TYPES = ("bd3lm", "mdlm")
HF_EXTRA_KEYS = ("sampling_eps_min", "sampling_eps_max")
TIME_FLAG_KEY = "time_conditioning"
"""Safetensors metadata key: the flag the exported weights were trained with."""
PICKLES = ("pytorch_model.bin", "model.ckpt", "last.ckpt", "model.pt", "model.pth")
# MDLM/BD3-LM field -> accepted aliases (Hydra-style or transformers-style names)
HF_ALIASES = {
    "hidden_dim": ("hidden_size",),
    "n_blocks": ("num_hidden_layers", "n_layers"),
    "n_heads": ("num_attention_heads",),
    "model_length": ("length", "max_position_embeddings"),
}


# --------------------------------------------------------------------------- building
def _check_weights(state: dict[str, torch.Tensor], source: Path) -> None:
    """Weights are floating point and finite (a diverged or damaged file is refused here,
    not after a whole draft of NaN)."""
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise UserError(f"{source}: weight '{name}' is stored as {tensor.dtype}, not floats")
        if not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{source}: weight '{name}' holds NaN or infinite values")


def _build(config: ModelConfig, state: dict[str, torch.Tensor], source: Path) -> Denoiser:
    """A Denoiser holding `state` (float32), built without a throw-away random init."""
    with torch.device("meta"):
        model = Denoiser(config)
    _check_weights(state, source)
    state = {k: v.float() for k, v in state.items()}
    if "rotary_emb.inv_freq" not in state:
        state["rotary_emb.inv_freq"] = _inv_freq(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
        if unknown:
            parts.append(
                f"unexpected {', '.join(unknown[:3])}" + (" ..." if len(unknown) > 3 else "")
            )
        raise UserError(f"{source}: weights do not match the model ({'; '.join(parts)})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UserError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, the config implies "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _inv_freq(config: ModelConfig) -> torch.Tensor:
    dim = config.head_dim
    return 1.0 / (config.rope_base ** (torch.arange(0, dim, 2).float() / dim))


def _finish(model: Denoiser, device: str, header: dict[str, Any]) -> Denoiser:
    model.checkpoint_header = header  # provenance (block sizes, clip interval, step, ...)
    model.sampling_eps = _eps_from_header(header)
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"cannot move the model to device '{device}': {exc}") from None
    return model.eval()


def _eps_from_header(header: dict[str, Any]) -> tuple[float, float]:
    """Clip interval from a header: [lo, hi], or {block: [lo, hi]} (smallest block wins)."""
    eps = header.get("sampling_eps")
    if isinstance(eps, dict) and eps:
        key = min(eps, key=lambda k: int(k) if str(k).isdigit() else 1 << 30)
        eps = eps[key]
    if isinstance(eps, (list, tuple)) and len(eps) == 2:
        return float(eps[0]), float(eps[1])
    return 1e-3, 1.0


# --------------------------------------------------------------------------- sbd format
def _load_sbd(path: Path, device: str) -> Denoiser:
    tensors, header = artifacts.load_tensors(path, schema=SBD_SCHEMA)
    if not isinstance(header.get("model_config"), dict):
        raise UserError(f"{path}: header has no model_config")
    config = ModelConfig.from_dict(header["model_config"])
    return _finish(_build(config, tensors, path), device, header)


def save_sbd_model(
    model: torch.nn.Module, path: str | Path, header: dict[str, Any] | None = None
) -> Path:
    """Write `model` to `path` (a .safetensors file, or a directory -> DIR/model.safetensors).

    Header: {"model_config": ModelConfig.to_dict(), "sampling_eps": [lo, hi]} updated with
    the caller's `header`. Written atomically, schema "sbd.model".
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    target = Path(path)
    if target.is_dir():
        target = target / "model.safetensors"
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    full: dict[str, Any] = {
        "model_config": model.config.to_dict(),
        "sampling_eps": list(getattr(model, "sampling_eps", (1e-3, 1.0))),
    }
    full.update(header or {})
    artifacts.save_tensors(target, state, SBD_SCHEMA, full)
    return target


# --------------------------------------------------------------------------- HF format
def _field(cfg: dict[str, Any], name: str, source: Path) -> Any:
    for key in (name, *HF_ALIASES.get(name, ())):
        if key in cfg:
            return cfg[key]
    raise UserError(f"{source}: config.json lacks '{name}' (not a BD3-LM/MDLM checkpoint?)")


def _flag(cfg: dict[str, Any], name: str, source: Path) -> bool:
    value = cfg.get(name, False)
    if not isinstance(value, bool):
        raise UserError(f"{source}: '{name}' must be true or false, got {value!r}")
    return value


def _check_time_flag(declared: bool, recorded: Any, source: Path, where: str) -> None:
    """A flag recorded with the weights ("true"/"false" or a bool) must equal the declared one."""
    if recorded is None:
        return
    if isinstance(recorded, str):
        recorded = {"true": True, "false": False}.get(recorded.lower(), recorded)
    if recorded != declared:
        raise UserError(
            f"{source}: time_conditioning is {str(declared).lower()} in config.json but the "
            f"weights were saved with time_conditioning = {recorded!r} ({where}); fix config.json"
        )


def hf_model_config(cfg: dict[str, Any], source: Path) -> ModelConfig:
    """Map a BD3-LM / MDLM config.json to a ModelConfig ([MASK] = the last id, as published)."""
    kind = str(cfg.get("model_type", "bd3lm")).lower()
    if kind not in HF_TYPES:
        raise UserError(f"{source}: model_type '{kind}' is not supported (bd3lm or mdlm)")
    if cfg.get("adaln", True) is False:
        raise UserError(f"{source}: checkpoints without adaLN (adaln=false) are not supported")
    if cfg.get("causal", False) is True:
        raise UserError(f"{source}: a causal (autoregressive) checkpoint is not a denoiser")
    vocab = int(_field(cfg, "vocab_size", source))
    gpt2 = vocab == 50258  # GPT-2 + [MASK]: BOS = EOS = 50256
    try:
        return ModelConfig(
            vocab_size=vocab,
            mask_id=vocab - 1,
            seq_len=int(_field(cfg, "model_length", source)),
            n_layers=int(_field(cfg, "n_blocks", source)),
            d_model=int(_field(cfg, "hidden_dim", source)),
            n_heads=int(_field(cfg, "n_heads", source)),
            cond_dim=int(_field(cfg, "cond_dim", source)),
            dropout=float(cfg.get("dropout", 0.1)),
            time_conditioning=_flag(cfg, "time_conditioning", source),
            bos_id=50256 if gpt2 else None,
            eos_id=50256 if gpt2 else None,
        )
    except (TypeError, ValueError) as exc:
        raise UserError(f"{source}: bad value in config.json ({exc})") from None


def _load_hf(directory: Path, cfg: dict[str, Any], weights: Path, device: str) -> Denoiser:
    config = hf_model_config(cfg, directory / "config.json")
    recorded = artifacts.read_tensor_metadata(weights).get(TIME_FLAG_KEY)
    _check_time_flag(config.time_conditioning, recorded, directory, f"{weights.name} metadata")
    raw, _ = artifacts.load_tensors(weights)
    state, header = {}, {"source": "hf", "model_type": cfg.get("model_type", "bd3lm")}
    for key, tensor in raw.items():
        if key.startswith("backbone."):
            state[key.removeprefix("backbone.")] = tensor
        elif key not in HF_EXTRA_KEYS:
            raise UserError(f"{weights}: unexpected tensor '{key}' (expected backbone.* keys)")
    if not state:
        raise UserError(f"{weights}: no backbone.* tensors (not a BD3-LM/MDLM checkpoint)")
    lo = cfg.get("sampling_eps_min", raw.get("sampling_eps_min"))  # config: exact decimals
    hi = cfg.get("sampling_eps_max", raw.get("sampling_eps_max"))
    if lo is not None and hi is not None:
        header["sampling_eps"] = [float(lo), float(hi)]
    if "block_size" in cfg:
        header["block_sizes"] = [int(cfg["block_size"])]
    return _finish(_build(config, state, weights), device, header)


def _check_run_config(run: Path, in_weights: bool) -> None:
    """An sbd run's config.json `model.time_conditioning`, when present, equals the header's."""
    path = run / "config.json"
    if not path.is_file():
        return
    cfg = artifacts.read_json(path, "run config")
    model = cfg.get("model") if isinstance(cfg, dict) else None
    declared = model.get("time_conditioning", in_weights) if isinstance(model, dict) else in_weights
    if declared != in_weights:
        raise UserError(
            f"{run}: config.json says time_conditioning = {declared!r} "
            f"but model.safetensors was trained with {str(in_weights).lower()}"
        )


# --------------------------------------------------------------------------- entry point
HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""`owner/name`, as the Hugging Face hub names a model."""


def model_not_found(name: str | Path, source: str = "") -> UserError:
    """The one-line error of a model path that does not exist; a hub-style `owner/name`
    says how to get it (sbd loads local directories only: download, then -m DIR)."""
    text, where = str(name), f" (from {source})" if source else ""
    if not HUB_NAME.match(text) or Path(text.split("/")[0]).exists():
        return UserError(f"model not found: {text}{where}")
    offline = (
        " (HF_HUB_OFFLINE is set here: the download needs the network)"
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        else ""
    )
    local = text.split("/")[1]
    return UserError(
        f"model not found: {text}{where} is no local directory; sbd does not download, so get "
        f"the hub model first: hf download {text} --local-dir {local}, then -m {local}{offline}"
    )


def load_model(path: str | Path, device: str = "cpu") -> Denoiser:
    """Load an sbd run / sbd model.safetensors / BD3-LM or MDLM HF directory, in eval mode."""
    p = Path(path)
    if not p.exists():
        raise model_not_found(path)
    if p.is_file():
        if p.suffix != ".safetensors":
            raise UserError(
                f"{p}: not a .safetensors file (sbd reads safetensors checkpoints only)"
            )
        return _load_sbd(p, device)
    weights = p / "model.safetensors"
    if not weights.is_file():
        pickled = [name for name in PICKLES if (p / name).exists()]
        if pickled:
            raise UserError(
                f"{p}: only a pickle checkpoint ({pickled[0]}); sbd loads safetensors only "
                "(convert it to model.safetensors first)"
            )
        raise UserError(f"{p}: no model.safetensors (not an sbd run or a BD3-LM/MDLM directory)")
    if artifacts.read_tensor_metadata(weights).get("schema") == SBD_SCHEMA:
        model = _load_sbd(weights, device)
        _check_run_config(p, model.config.time_conditioning)
        return model
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{p}: model.safetensors is not an sbd model and there is no config.json")
    cfg = artifacts.read_json(cfg_path, "checkpoint config")
    if not isinstance(cfg, dict) or ("model_type" not in cfg and "hidden_dim" not in cfg):
        raise UserError(f"{cfg_path}: unrecognised checkpoint layout (expected BD3-LM or MDLM)")
    return _load_hf(p, cfg, weights, device)


# --------------------------------------------------------------------------- export
def _export_config(model: Denoiser, block_size: int) -> dict[str, Any]:
    cfg = model.config
    lo, hi = model.sampling_eps
    return {
        "architectures": ["BD3LM"],
        "model_type": "bd3lm",
        "block_size": block_size,
        "vocab_size": cfg.vocab_size,
        "model_length": cfg.seq_len,
        "hidden_dim": cfg.d_model,
        "cond_dim": cfg.cond_dim,
        "n_blocks": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "dropout": cfg.dropout,
        "time_conditioning": cfg.time_conditioning,
        "cross_attn": True,
        "adaln": True,
        "attn_backend": "sdpa",
        "causal": False,
        "var_min": True,
        "sampling_eps_min": lo,
        "sampling_eps_max": hi,
        "return_dict": False,
        "torch_dtype": "float32",
    }


def _check_exportable(model: Denoiser) -> None:
    cfg = model.config
    fixed = {"mlp_ratio": (cfg.mlp_ratio, 4), "freq_dim": (cfg.freq_dim, 256)}
    fixed["rope_base"] = (cfg.rope_base, 10000.0)
    fixed["mask_id"] = (cfg.mask_id, cfg.vocab_size - 1)
    for name, (have, need) in fixed.items():
        if have != need:
            raise UserError(
                f"cannot export to BD3-LM: its layout needs {name} = {need}, got {have}"
            )


def _default_block(model: Denoiser, seq_len: int) -> int:
    sizes = getattr(model, "checkpoint_header", {}).get("block_sizes") or [4]
    return min(int(min(sizes)), seq_len)


def export_bd3lm(
    model_or_run: torch.nn.Module | str | Path,
    out_dir: str | Path,
    block_size: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `out_dir` = config.json + model.safetensors (`backbone.*` keys, sampling_eps_*).

    The result loads with `load_model` and with the BD3-LM Hugging Face code. `block_size`
    defaults to the smallest block size the run trained with (4 when unknown).
    """
    model = model_or_run if isinstance(model_or_run, Denoiser) else load_model(model_or_run)
    _check_exportable(model)
    out = Path(out_dir)
    _check_replaceable(out, overwrite)
    block = block_size if block_size is not None else _default_block(model, model.config.seq_len)
    if block < 1:
        raise UserError(f"block size must be >= 1, got {block}")
    state = {f"backbone.{k}": v.detach().to("cpu", torch.float32).contiguous()
             for k, v in model.state_dict().items()}  # fmt: skip
    lo, hi = model.sampling_eps
    state["sampling_eps_min"] = torch.tensor(lo, dtype=torch.float32)
    state["sampling_eps_max"] = torch.tensor(hi, dtype=torch.float32)
    from safetensors.torch import save_file

    with artifacts.atomic_dir(out) as tmp:
        config = _export_config(model, block)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        meta = {"format": "pt", TIME_FLAG_KEY: str(model.config.time_conditioning).lower()}
        save_file(state, str(tmp / "model.safetensors"), metadata=meta)
    return out


EXPORT_FILES = frozenset({"config.json", "model.safetensors"})
"""What `export_bd3lm` writes: the only entries of a directory `overwrite` may replace."""


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """`out` may be created, or (with `overwrite`) replaced only when it holds nothing but an
    earlier export: a run directory, its resume state, or files sbd did not write are never
    deleted."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir() or not overwrite:
        raise UserError(f"{out} already exists (choose a new directory, or --force to replace it)")
    names = {p.name for p in out.iterdir()}
    config = out / "config.json"
    try:
        exported = json.loads(config.read_text(encoding="utf-8")).get("model_type") == "bd3lm"
    except (OSError, ValueError, AttributeError):
        exported = False
    if not names <= EXPORT_FILES or not exported:
        kept = ", ".join(sorted(names - EXPORT_FILES)) or "config.json"
        raise UserError(
            f"{out} is not an earlier export (it holds {kept}): --force replaces only a "
            "directory written by 'sbd export'; choose a new directory"
        )


def resolve_device(device: str) -> str:
    """The device to load a model on: 'auto' = CUDA when available, else CPU; a CUDA
    device that is not there and an unknown name are UserErrors."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"`device` {device}: no CUDA device is available")
    if not device.startswith(("cpu", "cuda", "mps")):
        raise UserError(f"unknown `device` {device!r} (cpu, cuda, or auto)")
    return device
