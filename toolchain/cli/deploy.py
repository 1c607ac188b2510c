"""``cbnet-tl deploy``: upload a bundle to a device over SSH, check it there, switch; or roll back.

    cbnet-tl deploy out/mnist/bundle pi@raspberrypi.local
    cbnet-tl deploy --rollback pi@raspberrypi.local:/opt/cbnet-tl
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cbnet_tl.toolchain.cli.common import JsonOutput, echo_json

app = typer.Typer()


@app.command()
def deploy(
    arguments: Annotated[List[str], typer.Argument(
        metavar="[BUNDLE] DESTINATION",
        help="The bundle directory and user@host[:/dir] (default dir /opt/cbnet-tl); with --rollback only user@host[:/dir].")],
    rollback: Annotated[bool, typer.Option("--rollback", help="Switch current back to the previous release.")] = False,
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="SSH port of the device.")] = None,
    identity: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="SSH private key file.")] = None,
    python: Annotated[Optional[str], typer.Option(help="Python on the device that runs the self-test (default: DIR/venv/bin/python3).")] = None,
    restart: Annotated[bool, typer.Option("--restart/--no-restart", help="Restart the cbnet-tl service after the switch.")] = True,
    ssh_option: Annotated[Optional[List[str]], typer.Option("--ssh-option", "-o", help="Extra ssh -o KEY=VALUE, e.g. UserKnownHostsFile=FILE (repeatable).")] = None,
    json_output: JsonOutput = False,
):
    """Deploy a bundle to a device (upload into releases/VERSION, verify every sha256 there, self-test, tune once per bundle version, switch
    current, restart the service), or --rollback to the previous release. A failed step keeps the running version."""
    from cbnet_tl.toolchain.delivery import deploy as deploying

    expected = 1 if rollback else 2
    if len(arguments) != expected:
        usage = "--rollback user@host[:/dir]" if rollback else "BUNDLE user@host[:/dir]"
        raise typer.BadParameter(f"Expected {usage}. Received: {' '.join(arguments)}", param_hint="arguments")
    destination = deploying.Destination.parse(arguments[-1], port=port, identity=identity,
                                              ssh_options=tuple(ssh_option or ()))
    log = (lambda line: typer.echo(line, err=True)) if json_output else typer.echo
    restart_command = deploying.DEFAULT_RESTART if restart else None
    if rollback:
        record = deploying.rollback(destination, restart=restart_command, log=log)
        summary = f"rolled back: current -> {record['current']}"
    else:
        record = deploying.deploy(Path(arguments[0]), destination, python=python or deploying.default_python(destination),
                                  restart=restart_command, log=log)
        summary = f"deployed: current -> {record['release']}"
    if json_output:
        echo_json(record)
    else:
        typer.echo(summary)
