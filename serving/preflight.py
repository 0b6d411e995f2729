"""Checks before ``dmfn serve`` starts anything: the user, the repository, nginx, the public
ports (a killed predecessor's leftovers are cleared first)."""

from __future__ import annotations

import os
from collections.abc import Callable

from .frontdoor import FrontDoorError, find_nginx
from .repository import check_repository
from .runstate import clear_predecessor, port_owner
from .settings import ServiceConfig
from .triton import PortInUseError, port_is_free


def check_can_start(config: ServiceConfig) -> None:
    """Refuse root without ``allow_root`` and an incomplete repository (ValueError), and a
    machine without nginx (FrontDoorError)."""
    if os.geteuid() == 0 and not config.allow_root:
        raise ValueError(
            "refusing to run as root: the front door and the workers parse what clients "
            "send, and a flaw in any of them would then own the machine. Run dmfn serve as "
            "its own user (docs/deploy.md), or pass --allow-root where root is the only "
            "user (a container)"
        )
    problems = check_repository(config.repository)
    if problems:
        raise ValueError(
            f"argument 'repository': {config.repository} is not a complete dmfn model "
            "repository: " + "; ".join(problems)
        )
    if find_nginx() is None:
        raise FrontDoorError(
            "nginx was not found: install it (`apt-get install nginx`; `make setup` does this "
            "as root)"
        )


def claim_public_ports(config: ServiceConfig, on_cleared: Callable[[str], None]) -> None:
    """Check that the three public ports are distinct, valid and free, after clearing what a
    killed ``dmfn serve`` on them left (:mod:`~dmfn.serving.runstate`; ``on_cleared`` gets a
    sentence on what was done). Raises ValueError, or PortInUseError for a taken port."""
    c = config
    ports = {"http_port": c.http_port, "grpc_port": c.grpc_port, "metrics_port": c.metrics_port}
    if len(set(ports.values())) != len(ports):
        raise ValueError(f"ports must be distinct, got {ports}")
    for name, port in ports.items():
        if not 0 < port < 65536:
            raise ValueError(f"argument '{name}': must be in 1..65535, got {port}")
    try:
        cleared = clear_predecessor(c.host, (c.http_port, c.grpc_port, c.metrics_port))
    except RuntimeError as err:
        raise PortInUseError(str(err)) from None
    if cleared:
        on_cleared(cleared)
    for name, port in ports.items():
        if not port_is_free(c.host, port):
            raise PortInUseError(
                f"argument '{name}' (--{name.replace('_', '-')}): port {port} on {c.host} "
                f"is already in use by {port_owner(port)}; stop it or choose another port"
            )
