"""``cbnet-tl deploy``: upload a bundle over SSH into a new versioned directory, verify it there, then switch.

Layout on the device, under DIR (default /opt/cbnet-tl):
    releases/<version>/   one directory per deployed bundle
    current  -> releases/<version>     switched atomically (symlink to a temp name, then rename)
    previous -> releases/<older>       what ``--rollback`` switches back to
A failed upload, checksum check or self-test removes the half-deployed directory and leaves
``current`` as it was. Then one of the bundle's services (``ServiceSetup``: watch, the default, or serve)
is installed from the release's unit file with DIR filled in, enabled, and restarted; the other one is
disabled (the two conflict). System ``ssh`` and ``rsync`` are called with argument lists; host-key checking
stays on (``BatchMode=yes`` only stops password prompts).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from cbnet_tl.runtime.bundle import open_manifest, verify_files
from cbnet_tl.runtime.errors import CbnetError, DeployError
from cbnet_tl.toolchain.delivery.bundle import SAFE_PATH, SERVICE_UNITS, UNIT_DIR

DEFAULT_DIR = "/opt/cbnet-tl"
DEFAULT_SERVICE = "watch"
SAFE_VERSION = re.compile(r"^[A-Za-z0-9._-]+$")
# What ssh and rsync print, mapped to one clear line; the first match wins.
KNOWN_FAILURES = (
    (("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED"),
     "the device's host key is unknown or has changed (Host key verification failed); check it, then add it "
     "to known_hosts (ssh-keyscan, or ssh once by hand)"),
    (("Permission denied (publickey", "Permission denied ("),
     "the device refused the key (Permission denied); add your public key to its ~/.ssh/authorized_keys or "
     "pass --identity"),
    (("Could not resolve hostname", "Connection refused", "Connection timed out", "No route to host",
      "Network is unreachable", "Connection closed by", "Operation timed out"),
     "cannot reach the device over ssh; check the host name, --port and that sshd runs there"),
    (("rsync: command not found", "rsync: not found", "rsync: No such file", "remote command not found"),
     "rsync is not installed on the device; install it there (sudo apt install rsync)"),
    (("No space left on device", "Disk quota exceeded"),
     "no space left on the device; free some space there (old releases/ can go)"),
    (("sudo: a terminal is required", "sudo: a password is required"),
     "sudo on the device asks for a password; let the deploying user run install and systemctl through sudo "
     "without one, or pass --no-restart and install the service by hand (the bundle's README.md)"),
    (("System has not been booted with systemd", "Failed to connect to bus"),
     "systemd does not run on the device; pass --no-restart and start run.py by hand"),
)


@dataclass(frozen=True)
class ServiceSetup:
    """The bundle's service that runs each release (``name``, a key of ``SERVICE_UNITS``) and how it is put in
    place: its unit, with the device's directory filled in, goes into ``unit_dir``; ``systemctl`` reloads, enables
    and restarts it; both run as root through ``sudo``. Tests point the last three at stand-ins."""
    name: str = DEFAULT_SERVICE
    unit_dir: str = UNIT_DIR
    sudo: tuple = ("sudo",)
    systemctl: tuple = ("systemctl",)

    def __post_init__(self):
        if self.name not in SERVICE_UNITS:
            raise DeployError(f"Expected a service, one of {', '.join(SERVICE_UNITS)}. Received: {self.name!r}")

    @property
    def unit(self) -> str:
        return SERVICE_UNITS[self.name]


@dataclass(frozen=True)
class Destination:
    host: str  # user@host
    directory: str = DEFAULT_DIR
    port: Optional[int] = None
    identity: Optional[Path] = None
    ssh_options: tuple = field(default_factory=tuple)  # extra "-o Key=Value" pairs, e.g. UserKnownHostsFile
    rsync_path: str = "rsync"  # the rsync program on the device

    @classmethod
    def parse(cls, text: str, **kwargs) -> "Destination":
        match = re.fullmatch(r"(?P<host>[^:\s]+)(?::(?P<dir>/[^\s]*))?", text)
        if not match or text.startswith("-"):
            raise DeployError(f"Expected user@host or user@host:/absolute/dir. Received: {text!r}")
        return cls(match["host"], (match["dir"] or DEFAULT_DIR).rstrip("/") or "/", **kwargs)

    def ssh_args(self) -> list:
        args = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
        if self.port:
            args += ["-p", str(self.port)]
        if self.identity:
            args += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        for option in self.ssh_options:
            args += ["-o", option]
        return args


def _run(args: list, what: str, input_text: Optional[str] = None) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, input=input_text, check=True, timeout=600)
    except FileNotFoundError:
        raise DeployError(f"{what}: {args[0]} is not installed; install openssh-client and rsync") from None
    except subprocess.CalledProcessError as error:
        output = (error.stderr or "") + (error.stdout or "")
        tail = " | ".join(output.strip().splitlines()[-3:])
        raise DeployError(f"{what} failed (exit {error.returncode}): {explain(output, error.returncode)}{tail}") from None
    except subprocess.TimeoutExpired:
        raise DeployError(f"{what} timed out after 600 s") from None
    return done.stdout


def explain(output: str, returncode: int = 1) -> str:
    """The clear cause of a failed ssh/rsync call ("" when unknown), followed by "; " and the raw tail."""
    for needles, cause in KNOWN_FAILURES:
        if any(needle in output for needle in needles):
            return f"{cause}; "
    if returncode == 255:
        return "cannot reach the device over ssh; check the host name, --port and that sshd runs there; "
    return ""


def remote(destination: Destination, command: Sequence[str], what: str, input_text: Optional[str] = None) -> str:
    """Run one command on the device; every word is quoted for the remote shell."""
    return _run(destination.ssh_args() + [destination.host, "--", shlex.join(command)], what, input_text)


def _remote_script(destination: Destination, script: str, what: str) -> str:
    return _run(destination.ssh_args() + [destination.host, "--", script], what)


def default_python(destination: Destination) -> str:
    """The bundle venv's interpreter on the device, as the bundle README sets it up."""
    return f"{destination.directory}/venv/bin/python3"


def _free_kib(destination: Destination, directory: str) -> Optional[int]:
    out = _remote_script(destination, f"mkdir -p {shlex.quote(directory)} && df -Pk {shlex.quote(directory)} | tail -n 1",
                         "connect to the device")
    fields = out.split()
    return int(fields[3]) if len(fields) >= 4 and fields[3].isdigit() else None


def deploy(bundle_dir: Path, destination: Destination, *, python: str = "python3",
           service: Optional[ServiceSetup] = ServiceSetup(), log: Callable[[str], None] = lambda line: None) -> dict:
    """Upload, verify every sha256 on the device, self-test, switch ``current``, then install, enable and restart
    ``service`` (None: leave systemd alone). Returns a record. ``log`` receives one line per step as it starts."""
    bundle_dir, manifest = open_manifest(bundle_dir)
    try:
        verify_files(bundle_dir, manifest)  # never ship a bundle that is already broken here
    except CbnetError as error:
        raise DeployError(f"Not deploying: the bundle is already broken here: {error}") from None
    version = manifest.version
    if not SAFE_VERSION.match(version):
        raise DeployError(f"Bundle version {version!r} is not a safe directory name; rebuild the bundle")
    base = destination.directory
    unit_text = None
    if service is not None:  # refused here, before anything happens on the device
        unit_file = bundle_dir / service.unit
        if not unit_file.is_file():
            raise DeployError(f"{bundle_dir} has no {service.unit} (bundles built before cbnet-tl had the {service.name} "
                              "service lack it); build the bundle again, or pass --no-restart")
        unit_text = unit_for_device(unit_file.read_text(), service.unit, base)
    release, incoming = f"{base}/releases/{version}", f"{base}/releases/.incoming-{version}"
    q = shlex.quote
    log(f"connecting to {destination.host} (release {version} into {base})")
    needed_kib = sum(p.stat().st_size for p in bundle_dir.rglob("*") if p.is_file()) // 1024 + 1
    free_kib = _free_kib(destination, f"{base}/releases")
    if free_kib is not None and free_kib < needed_kib:
        raise DeployError(f"no space left on the device: {base}/releases has {free_kib} KiB free, the bundle needs "
                          f"{needed_kib} KiB; free some space there (old releases/ can go)")
    if unit_text is not None:
        _check_device_for(destination, service.unit, unit_text)
    exists = _remote_script(destination, f"test -e {q(release)} && echo yes || echo no", "check for the release")
    if exists.strip() == "yes":
        raise DeployError(f"{destination.host}:{release} already exists; this version is deployed. "
                          "Use --rollback or build a new version")
    _remote_script(destination, f"rm -rf {q(incoming)} && mkdir -p {q(incoming)}", "create the upload directory")
    try:
        rsync_ssh = shlex.join(destination.ssh_args())
        log(f"uploading {len(manifest.files)} files ({needed_kib} KiB) with rsync")
        _run(["rsync", "-a", "--delete", "--rsync-path", destination.rsync_path, "-e", rsync_ssh, f"{bundle_dir}/",
              f"{destination.host}:{incoming}/"], "upload")
        log("verifying every sha256 on the device")
        checksums = "".join(f"{digest}  {name}\n" for name, digest in sorted(manifest.files.items()))
        _run(destination.ssh_args() + [destination.host, "--", f"cd {q(incoming)} && sha256sum --check --strict --quiet -"],
             "checksum check on the device", input_text=checksums)
        log(f"self-test on the device with {python}")
        remote(destination, [python, f"{incoming}/run.py", "--bundle", incoming, "selftest"], "self-test on the device")
        log("tuning on the device (once per bundle version: DIR/state/tuning.json)")
        remote(destination, [python, f"{incoming}/run.py", "--bundle", incoming, "tune", "--if-missing"],
               "tuning on the device")
    except DeployError:
        _remote_script(destination, f"rm -rf {q(incoming)}", "clean up the failed upload")
        raise
    previous = _remote_script(destination, f"readlink {q(base + '/current')} || true", "read current").strip()
    switch = f"mv {q(incoming)} {q(release)} && " + _point(base, "current", release)
    if previous:
        switch += " && " + _point(base, "previous", previous)
    log(f"switching current to releases/{version}")
    _remote_script(destination, switch, "switch current")
    if service is not None:
        install_service(destination, service, unit_text, log)
    return {"host": destination.host, "release": release, "previous": previous or None,
            "service": service.unit if service else None, "restarted": service is not None}


def _point(base: str, link: str, target: str) -> str:
    """Shell to point BASE/LINK at TARGET atomically (a new symlink under a temporary name, then a rename)."""
    q = shlex.quote
    return f"ln -sfn {q(target)} {q(f'{base}/.{link}.tmp')} && mv -T {q(f'{base}/.{link}.tmp')} {q(f'{base}/{link}')}"


def unit_for_device(text: str, unit: str, directory: str) -> str:
    """A bundle's unit file ``text`` with the device's ``directory`` in place of the one it was rendered for (its
    ``WorkingDirectory=DIR/current``). The directory goes into a unit file, so only [A-Za-z0-9._/-] is taken."""
    match = re.search(r"^WorkingDirectory=(/[A-Za-z0-9._/-]+)/current$", text, re.MULTILINE)
    if match is None:
        raise DeployError(f"{unit} has no WorkingDirectory=DIR/current line; build the bundle again")
    if not SAFE_PATH.match(directory):
        raise DeployError(f"Expected a device directory of [A-Za-z0-9._/-] only, as it goes into {unit}. "
                          f"Received: {directory!r}; deploy to another directory, or pass --no-restart")
    return text.replace(f"{match[1]}/", f"{directory}/")


def missing_on_device(destination: Destination, unit_text: str) -> list:
    """What the unit names that the device lacks: its ``User=``, its ``SupplementaryGroups=`` and the folders of
    its ``ReadWritePaths=`` (a "-" prefix marks one as optional)."""
    q, checks = shlex.quote, []
    for key, value in re.findall(r"^(User|SupplementaryGroups|ReadWritePaths)=(.*)$", unit_text, re.MULTILINE):
        for word in value.split():
            if key == "User":
                checks.append((f"id -u {q(word)}", f"user {word}"))
            elif key == "SupplementaryGroups":
                checks.append((f"getent group {q(word)}", f"group {word}"))
            elif not word.startswith("-"):
                checks.append((f"test -d {q(word)}", word))
    script = "; ".join(f"{test} >/dev/null 2>&1 || echo {q(label)}" for test, label in checks) or "true"
    return _remote_script(destination, script, "check the device for the service").splitlines()


def _check_device_for(destination: Destination, unit: str, unit_text: str) -> None:
    missing = missing_on_device(destination, unit_text)
    if missing:
        raise DeployError(f"the device lacks what {unit} needs: {', '.join(missing)}; set it up as the bundle's "
                          "README.md says (As a service), or pass --no-restart")


def install_service(destination: Destination, service: ServiceSetup, unit_text: str,
                    log: Callable[[str], None] = lambda line: None) -> None:
    """Write ``unit_text`` to UNIT_DIR/<unit>, reload systemd, disable the other service if it is installed (the
    two conflict), enable this one and restart it."""
    q, path = shlex.quote, f"{service.unit_dir}/{service.unit}"
    systemctl = [*service.sudo, *service.systemctl]
    log(f"installing {path}")
    remote(destination, [*service.sudo, "install", "-m", "0644", "/dev/stdin", path], "install the unit", unit_text)
    remote(destination, systemctl + ["daemon-reload"], "reload systemd")
    for other in (unit for unit in SERVICE_UNITS.values() if unit != service.unit):
        other_path = f"{service.unit_dir}/{other}"
        if _remote_script(destination, f"test -e {q(other_path)} && echo yes || echo no", "look for the other unit").strip() == "yes":
            log(f"disabling {other} (one service runs a release)")
            remote(destination, systemctl + ["disable", "--now", other], f"disable {other}")
    log(f"enabling and restarting {service.unit}")
    remote(destination, systemctl + ["enable", service.unit], "enable the service")
    remote(destination, systemctl + ["restart", service.unit], "restart the service")


def rollback(destination: Destination, *, service: Optional[ServiceSetup] = ServiceSetup(),
             log: Callable[[str], None] = lambda line: None) -> dict:
    """Switch ``current`` back to ``previous`` (and ``previous`` to what was current), then install that release's
    unit of ``service`` and restart it (None: leave systemd alone)."""
    base, q = destination.directory, shlex.quote
    log(f"connecting to {destination.host} (reading {base}/current and previous)")
    links = _remote_script(destination, f"readlink {q(base + '/current')} || true; echo ---; readlink {q(base + '/previous')} || true",
                           "read current and previous")
    current, _, previous = (part.strip() for part in links.partition("---"))
    if not previous:
        raise DeployError(f"{destination.host}:{base} has no previous release to roll back to")
    unit_text = None
    if service is not None:  # the release rolled back to brings its own unit; refused before the switch if it has none
        text = _remote_script(destination, f"cat {q(previous + '/' + service.unit)} 2>/dev/null || true",
                              f"read {service.unit} of {previous}")
        if not text.strip():
            raise DeployError(f"{previous} has no {service.unit} (built before cbnet-tl had the {service.name} "
                              "service); roll back with another --service, or pass --no-restart")
        unit_text = unit_for_device(text, service.unit, base)
        _check_device_for(destination, service.unit, unit_text)
    script = f"test -d {q(previous)} && " + _point(base, "current", previous)
    if current:
        script += " && " + _point(base, "previous", current)
    log(f"switching current back to {previous}")
    _remote_script(destination, script, "switch back")
    if service is not None:
        install_service(destination, service, unit_text, log)
    return {"host": destination.host, "current": previous, "previous": current or None,
            "service": service.unit if service else None, "restarted": service is not None}
