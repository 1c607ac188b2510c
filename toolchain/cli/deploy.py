"""``cbnet-tl deploy``: upload a bundle to a device over SSH, check it there, switch, and (re)start its service;
or roll back.

    cbnet-tl deploy out/mnist/bundle pi@raspberrypi.local
    cbnet-tl deploy out/mnist/bundle pi@raspberrypi.local --service serve
    cbnet-tl deploy --rollback pi@raspberrypi.local:/opt/cbnet-tl --service serve
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cbnet_tl.toolchain.cli.common import JsonOutput, echo_json
from cbnet_tl.toolchain.delivery.bundle import SERVICE_UNITS, UNIT_DIR

app = typer.Typer()
ServiceChoice = Enum("ServiceChoice", [(name, name) for name in SERVICE_UNITS], type=str)


@app.command()
def deploy(
    arguments: Annotated[List[str], typer.Argument(
        metavar="[BUNDLE] DESTINATION",
        help="The bundle directory and user@host[:/dir] (default dir /opt/cbnet-tl); with --rollback only user@host[:/dir].")],
    rollback: Annotated[bool, typer.Option("--rollback", help="Switch current back to the previous release.")] = False,
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="SSH port of the device.")] = None,
    identity: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="SSH private key file.")] = None,
    python: Annotated[Optional[str], typer.Option(help="Python on the device that runs the self-test (default: DIR/venv/bin/python3).")] = None,
    service: Annotated[Optional[ServiceChoice], typer.Option(help=(
        "The bundle's service that runs the release: watch (the default: run.py watch, images dropped into DIR/inbox; "
        f"{SERVICE_UNITS['watch']}) or serve (run.py serve, a camera or stream, a web page and an HTTP API; "
        f"{SERVICE_UNITS['serve']}). Its unit goes into {UNIT_DIR} with DIR filled in, then sudo systemctl "
        "daemon-reload, enable and restart; the other service is disabled. With --rollback: the same, from the release "
        "rolled back to."))] = None,
    restart: Annotated[bool, typer.Option("--restart/--no-restart", help="Install, enable and restart --service after the switch (needs sudo without a password on the device); --no-restart leaves systemd alone.")] = True,
    ssh_option: Annotated[Optional[List[str]], typer.Option("--ssh-option", "-o", help="Extra ssh -o KEY=VALUE, e.g. UserKnownHostsFile=FILE (repeatable).")] = None,
    json_output: JsonOutput = False,
):
    """Deploy a bundle to a device (upload into releases/VERSION, verify every sha256 there, self-test, tune once per bundle version, switch
    current, install and restart --service), or --rollback to the previous release. A failed step keeps the running version."""
    from cbnet_tl.toolchain.delivery import deploy as deploying

    expected = 1 if rollback else 2
    if len(arguments) != expected:
        usage = "--rollback user@host[:/dir]" if rollback else "BUNDLE user@host[:/dir]"
        raise typer.BadParameter(f"Expected {usage}. Received: {' '.join(arguments)}", param_hint="arguments")
    destination = deploying.Destination.parse(arguments[-1], port=port, identity=identity,
                                              ssh_options=tuple(ssh_option or ()))
    log = (lambda line: typer.echo(line, err=True)) if json_output else typer.echo
    if service is not None and not restart:
        raise typer.BadParameter(f"Expected --service {service.value} or --no-restart, not both: --no-restart leaves "
                                 "systemd alone, so no service is installed or restarted", param_hint="--service")
    setup = (deploying.ServiceSetup(service.value) if service else deploying.ServiceSetup()) if restart else None
    if rollback:
        record = deploying.rollback(destination, service=setup, log=log)
        summary = f"rolled back: current -> {record['current']}"
    else:
        record = deploying.deploy(Path(arguments[0]), destination, python=python or deploying.default_python(destination),
                                  service=setup, log=log)
        summary = f"deployed: current -> {record['release']}"
    if setup is not None:
        summary += f"; {setup.unit} enabled and restarted"
    if json_output:
        echo_json(record)
    else:
        typer.echo(summary)
