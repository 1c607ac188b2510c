"""``cbnet-tl inspect`` (the Edge TPU mapping of models)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from typing_extensions import Annotated

from cbnet_tl.toolchain.cli.common import JsonOutput, TargetChoice, echo_json

app = typer.Typer()


@app.command()
def inspect(
    models: Annotated[List[Path], typer.Argument(help=".tflite files, or bundle/build directories (every model in models/).")],
    target: Annotated[TargetChoice, typer.Option(help="Accelerator target whose op table to check against.")] = TargetChoice("coral-usb"),
    json_output: JsonOutput = False,
):
    """Which ops of each model map to the Edge TPU, which fall back to the CPU, and where the graph splits."""
    from cbnet_tl.runtime.errors import CbnetError
    from cbnet_tl.toolchain.edgetpu.coral import collect_models, format_inspection, inspect_model
    from cbnet_tl.toolchain.targets import get_target

    if not get_target(target.value).uses_edgetpu:
        raise CbnetError(f"Target {target.value} has no Edge TPU; expected coral-usb or coral-devboard")
    reports = {path.stem: inspect_model(path) for path in collect_models(models)}
    if json_output:
        echo_json({"target": target.value, "models": reports})
    else:
        typer.echo(format_inspection(reports))
