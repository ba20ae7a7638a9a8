"""`sbd eval harness` and `sbd eval mauve`: the field's own instruments, as thin commands.

harness runs lm-evaluation-harness tasks on an sbd run (`sbdcli.harness`; the optional
`harness` extra) and prints lm-eval's metrics as a table on stderr. mauve prints MAUVE
between generated and reference texts (`sbdcli.evaluate.mauve`; the optional `mauve` extra,
GPL-3.0) as a row in the `eval genppl` table format, and its summary as JSON that `sbd
report` reads. As `eval genppl`, both write their JSON to --out, and on stdout when stdout is
a pipe or a file (or with --json).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any

import typer

from sbdcli.cli._app import console, term
from sbdcli.cli.evaluate import JsonOpt, eval_app, json_to_stdout, write_json
from sbdcli.cli.options import DeviceOpt
from sbdcli.cli.tables import metric_table, render_table
from sbdcli.errors import UserError


def _need(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{module} is not installed: pip install 'sbdcli[{extra}]'")


def _model_args(pairs: list[str] | None, known: tuple[str, ...]) -> dict[str, Any]:
    """--model-arg k=v (repeatable) into keyword arguments of the lm-eval model; a key it
    does not take is refused (it would be ignored silently)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--model-arg {pair!r}: expected key=value")
        if key.strip() not in known:
            raise UserError(
                f"--model-arg {key.strip()!r}: not a model argument ({', '.join(known)})"
            )
        out[key.strip()] = value.strip()
    return out


@eval_app.command("harness")
def harness(
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated lm-eval task names.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="sbd run directory (or checkpoint).")
    ] = "runs/latest",
    include_path: Annotated[
        Path | None,
        typer.Option("--include-path", help="Directory of extra task YAMLs (lm-eval's)."),
    ] = None,
    mc: Annotated[
        int, typer.Option("--mc", help="Monte Carlo draws K per loglikelihood request.")
    ] = 16,
    block: Annotated[
        int | None,
        typer.Option(
            "--block",
            help="Block size of the likelihood bound (1 is exact).",
            show_default="the run's small block",
        ),
    ] = None,
    revise: Annotated[
        bool, typer.Option("--revise", help="generate_until: remask + revise after the draft.")
    ] = False,
    model_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--model-arg",
            help="Other model argument key=value (repeatable), e.g. "
            "gamma=0.5, top_p=0.9, draft_block=8.",
        ),
    ] = None,
    limit: Annotated[
        float | None, typer.Option("--limit", help="Documents per task (or a fraction < 1).")
    ] = None,
    num_fewshot: Annotated[
        int | None, typer.Option("--num-fewshot", help="Few-shot examples.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per forward pass.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed of lm-eval and of the noise.")] = 0,
    out: Annotated[
        str | None, typer.Option("--out", help="Write the results JSON here (atomically).")
    ] = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """lm-evaluation-harness tasks on an sbd run (likelihoods are NELBO bounds).

    Example: sbd eval harness -m runs/latest --tasks lambada_openai --limit 100
    """
    _need("lm_eval", "harness")
    from sbdcli.artifacts import check_output_path

    if out is not None:
        check_output_path(out)
    if mc < 1 or batch_size < 1 or (block is not None and block < 1):
        raise UserError("--mc, --batch-size and --block must be >= 1")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be > 0 (documents per task, or a fraction < 1), got {limit}")
    if not Path(model).exists():
        from sbdcli.model.checkpoint import model_not_found

        raise model_not_found(model)
    from sbdcli.harness import HarnessOptions, result_rows, run_tasks
    from sbdcli.harness.lm import MODEL_ARGS

    args = {"mc": mc, "revise": revise, **_model_args(model_arg, MODEL_ARGS)}
    unused = [k for k in ("gamma", "revise_block") if k in args and not revise]
    if unused:
        raise UserError(f"--model-arg {unused[0]} sets the revise: it needs --revise")
    if block is not None:
        args["block"] = block
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    opts = HarnessOptions(model, names, include_path, device, batch_size, limit, num_fewshot,
                          seed, args)  # fmt: skip
    results = run_tasks(opts)
    rows = [(t, m, _num(v), _num(e)) for t, m, v, e in result_rows(results)]
    console.print(render_table("lm-eval", ("task", "metric", "value", "± stderr"), rows))
    s = results["sbd"]
    bound = (
        "exact (B = 1)"
        if s["exact"]
        else f"NELBO bound, B = {s['likelihood_block']}, K = {s['mc']} ({s['estimator']} draws)"
    )
    console.print(f"model {term(s['model'])}; loglikelihood: {bound}", style="dim", highlight=False)
    write_json([results], out, to_stdout=json_to_stdout(out, as_json))


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


@eval_app.command("mauve")
def mauve_cmd(
    samples: Annotated[
        str, typer.Argument(help="Generated texts: a record file, JSONL with 'text', or .txt.")
    ],
    reference: Annotated[
        str,
        typer.Option(
            "--reference",
            help="Reference texts: a data directory (its val rows), "
            "a record/JSONL file or a text file (one text per line).",
        ),
    ],
    featurizer: Annotated[
        Path,
        typer.Option(
            "--featurizer", help="Local transformers causal-LM directory (the field: GPT-2 Large)."
        ),
    ],
    tokens: Annotated[
        int | None,
        typer.Option(
            "--tokens",
            help="Featurizer tokens per text.",
            show_default="the shortest generated text",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per forward pass.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed of MAUVE's k-means.")] = 25,
    scaling: Annotated[float, typer.Option("--scaling", help="MAUVE's scaling constant c.")] = 5.0,
    out: Annotated[
        str | None, typer.Option("--out", help="Write the JSON summary here (atomically).")
    ] = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """MAUVE between generated and reference texts (mauve-text, GPL-3.0).

    Example: sbd draft -n 64 -o drafts.jsonl && sbd eval mauve drafts.jsonl --reference data
    """
    _need("mauve", "mauve")
    from sbdcli.artifacts import check_output_path
    from sbdcli.evaluate.mauve import mauve_summary, read_samples, read_texts
    from sbdcli.evaluate.report import cell, terminal_columns
    from sbdcli.model.checkpoint import resolve_device

    if out is not None:
        check_output_path(out)
    if batch_size < 1 or (tokens is not None and tokens < 1) or scaling <= 0:
        raise UserError("--batch-size and --tokens must be >= 1 and --scaling > 0")
    texts, records = read_samples(samples)
    summary = mauve_summary(
        texts, read_texts(reference), featurizer, name=samples, reference_name=reference,
        tokens=tokens, device=resolve_device(device), batch_size=batch_size, seed=seed,
        scaling=scaling, records=records,
    )  # fmt: skip
    cols = terminal_columns([summary])
    console.print(metric_table("MAUVE", cols, [summary], cell, numbered=True, no_wrap=True))
    console.print(f"[bold]1[/] {term(summary['name'])}", highlight=False, soft_wrap=True)
    console.print(f"  {term(summary['settings_short'])}", style="dim", highlight=False)
    console.print(f"featurizer: {term(featurizer)} (last hidden state, final token)", style="dim")
    write_json([summary], out, to_stdout=json_to_stdout(out, as_json))
