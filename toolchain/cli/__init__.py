"""The ``cbnet-tl`` command line: one Typer app joined from one module per command group.

Heavy modules are imported inside each command, so ``--help`` is fast. Every ``CbnetError`` (a failure
the user can fix) becomes one line on stderr and exit code 1, in one place (``_Commands.invoke``);
any other exception is a bug and keeps its traceback. Library logs (TensorFlow, absl, CUDA, the TFLite
converter) are kept off the terminal unless ``--verbose`` is given (``_options``, before any command runs).
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup
from typing_extensions import Annotated

from cbnet_tl.runtime.errors import CbnetError


class _Commands(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CbnetError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=1) from None


app = typer.Typer(
    name="cbnet-tl",
    cls=_Commands,
    help="Build, check, run and deploy CBNet classifiers (converting autoencoder + light classifier) "
    "as int8 TFLite bundles for Raspberry Pi and Coral boards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", envvar="CBNET_TL_VERBOSE",
                                          help="Also show the libraries' logs (TensorFlow, absl, the TFLite converter).")] = False,
) -> None:
    from cbnet_tl.toolchain.quiet import configure, prefer_onednn

    configure(verbose)
    prefer_onednn()


def _join() -> None:
    from cbnet_tl.toolchain.cli import bench, build, deploy, device, run, simulate

    for group in (build, run, simulate, device, bench, deploy):
        app.add_typer(group.app)


_join()


def main() -> None:
    app()
