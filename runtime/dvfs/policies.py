"""The table of DVFS policies a user can name: ``off``, ``performance``, ``powersave``, ``fixed:<MHz>``, ``eenet``."""

from __future__ import annotations

from typing import Optional

from cbnet_tl.runtime.dvfs.base import (
    POLICY_CHOICES,
    PRE_STAGE,
    DvfsContext,
    Policy,
    PolicyKind,
)
from cbnet_tl.runtime.dvfs.eenet import EENetPolicy
from cbnet_tl.runtime.dvfs.static import StaticPolicy
from cbnet_tl.runtime.errors import DvfsError

__all__ = ["POLICY_CHOICES", "PRE_STAGE", "DvfsContext", "EENetPolicy", "Policy", "PolicyKind", "StaticPolicy",
           "parse_policy"]


def parse_policy(text: str) -> Optional[Policy]:
    """``off`` → None; ``performance``, ``powersave``, ``fixed:<MHz>``, ``eenet`` → an unbound policy."""
    spec = str(text).strip().lower()
    if spec == "off":
        return None
    if spec in (PolicyKind.PERFORMANCE.value, PolicyKind.POWERSAVE.value):
        return StaticPolicy(PolicyKind(spec))
    if spec == PolicyKind.EENET.value:
        return EENetPolicy()
    if spec.startswith("fixed:") and spec[6:].isdigit() and int(spec[6:]) > 0:
        return StaticPolicy(PolicyKind.FIXED, int(spec[6:]))
    hint = " The oracle needs the whole trace: only `cbnet-tl simulate` offers it." if spec == "oracle" else ""
    raise DvfsError(f"Expected a DVFS policy, one of {list(POLICY_CHOICES)} (e.g. fixed:1000). "
                    f"Received: {text!r}.{hint}")
