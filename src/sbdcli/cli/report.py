"""`sbd report FILE...`: one self-contained HTML page of records and eval summaries.

    sbd eval genppl a.jsonl b.jsonl --out s.jsonl
    sbd report a.jsonl b.jsonl s.jsonl -o report.html

Files are sorted by content into sample records (JSONL or .safetensors) and eval
summaries (`sbd eval genppl --out`, or the demo's results.json). The page is built by
`sbdcli.evaluate.html_report`; this command only parses options and says where it wrote.
"""

from __future__ import annotations

from typing import Annotated

import typer

from sbdcli.cli._app import app, console, term
from sbdcli.errors import UserError


@app.command()
def report(
    files: Annotated[
        list[str],
        typer.Argument(help="Record files (JSONL, .safetensors) and summary files (JSONL, JSON)."),
    ],
    output: Annotated[
        str, typer.Option("--output", "-o", help="The HTML file to write.")
    ] = "report.html",
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Run whose tokenizer decodes the ids."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Data directory: its tokenizer, and oracle when synthetic."),
    ] = None,
    records: Annotated[
        int,
        typer.Option("--records", help="Records shown per file (all are used for calibration)."),
    ] = 20,
    title: Annotated[str, typer.Option("--title", help="The page's title.")] = "sbd report",
) -> None:
    """Write an HTML report: Gen PPL table, Pareto and calibration charts, records coloured.

    Example: sbd draft -n 64 -o drafts.jsonl && sbd report drafts.jsonl -o report.html
    """
    from sbdcli.artifacts import check_output_path
    from sbdcli.evaluate import html_report as hr
    from sbdcli.evaluate import views as vw

    if output == "-":
        raise UserError("-o must name an HTML file")
    if records < 0:
        raise UserError(f"--records must be >= 0, got {records}")
    check_output_path(output)
    summaries, sets = hr.load_inputs(files)
    every = [r for _, recs in sets for r in recs]
    codec, source = vw.find_codec(model, data, every[:1])
    oracle = hr.find_oracle(data, every[:1]) if every else None
    page = hr.build_report(
        summaries, sets, codec, oracle, max_records=records, title=title, source=source
    )
    hr.write_report(output, page)
    console.print(
        f"wrote {term(output)}: {len(summaries)} summaries, {len(every)} records "
        f"(open it in a browser, e.g. xdg-open {term(output)})",
        highlight=False,
        soft_wrap=True,
    )
