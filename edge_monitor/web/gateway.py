"""Wire the web page to a running Daemon: one MachineView sink per machine, ports to act on them."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from edge_monitor.config import Config, ConfigError, WebConfig, is_loopback
from edge_monitor.secrets import SecretError, read_secret
from edge_monitor.web.app import MachinePort, WebApp
from edge_monitor.web.auth import Auth
from edge_monitor.web.feedback import FeedbackStore
from edge_monitor.web.server import WebServer
from edge_monitor.web.view import MachineView

if TYPE_CHECKING:
    from edge_monitor.daemon import Daemon, Machine

_LOGGER = logging.getLogger(__name__)


def gateway_web_config(configs: list[Config]) -> Optional[WebConfig]:
    """The web settings of the gateway: those of every config that enables the page (they must agree)."""
    enabled = [c for c in configs if c.web.enabled]
    if not enabled:
        return None
    first = enabled[0]
    different = [c for c in enabled[1:] if c.web != first.web]
    if different:
        raise ConfigError([f"{c.source_file}: web: differs from {first.source_file}; the gateway has one web page, "
                           "so every config that enables it must give the same settings (or leave web: out)"
                           for c in different])
    return first.web


def setup_problems(web: WebConfig) -> list[str]:
    """What would stop the page from starting: its password file and TLS files (empty when fine or off)."""
    if not web.enabled:
        return []
    problems = []
    spec = web.password_file or ""
    if spec and not (spec.startswith("credential:") and not os.environ.get("CREDENTIALS_DIRECTORY")):
        try:  # a systemd credential exists only inside the service (and its ExecStartPre)
            read_secret(spec)
        except SecretError as exc:
            problems.append(f"web.password_file: {exc}")
    if web.tls is not None:
        for name, path in (("cert", web.tls.cert), ("key", web.tls.key)):
            if path and not os.access(path, os.R_OK):
                problems.append(f"web.tls.{name}: {path!r} is missing or not readable by this user")
    return problems



def build_web(daemon: Daemon) -> Optional[WebServer]:
    """A bound (not yet serving) WebServer for the daemon's machines, or None when no config enables it.

    Raises ConfigError for an unreadable password. A port that is taken (or a TLS file
    that does not load) is logged and the daemon runs without the page.
    """
    web = gateway_web_config(daemon.configs)
    if web is None:
        return None
    password = None
    if web.password_file:
        try:
            password = read_secret(web.password_file)
        except SecretError as exc:
            raise ConfigError([f"web.password_file: {exc}"]) from None
    elif not is_loopback(web.host):  # the loader refuses this already; never rely on one check alone
        raise ConfigError([f"web.host {web.host!r} needs web.password_file"])
    ports = []
    for m in daemon.machines:
        view = MachineView(m.id)
        m.sinks.append(view)  # before the workers start: the pipeline thread is the only writer
        worker = daemon._worker_of(m)
        sink = daemon.mqtt.get(m.id)
        clips_dir = None
        if m.clips is not None:  # where the daemon's ClipRecorder writes (see Daemon._build_machine)
            clips_dir = Path(m.cfg.clips.dir) if m.cfg.clips.dir else Path(m.cfg.state_dir) / "clips"

        def stats(worker: Any = worker, sink: Any = sink) -> dict[str, Any]:
            return {"source": worker.source.stats() if worker is not None else {},
                    "mqtt": sink.stats() if sink is not None else None}

        def threshold(machine: Machine = m) -> float:
            return machine.settings.threshold

        ports.append(MachinePort(
            id=m.id, name=m.cfg.machine.name or m.id, view=view,
            feedback=FeedbackStore(Path(m.cfg.state_dir), m.id), threshold=threshold,
            # the Machine validates (ValueError refuses, as for threshold/set), saves, applies and publishes
            set_threshold=m.set_threshold, stats=stats,
            publish_feedback=sink.publish_feedback if sink is not None else (lambda payload: False),
            clips_dir=clips_dir, hop_seconds=m.cfg.detection.window_hop_seconds, spec=m.pipeline.spec))
        view.state = m.pipeline.detector.state
    tls = web.tls
    try:
        app = WebApp(ports, Auth(password), secure_cookies=tls is not None, trusted_proxies=web.trusted_proxies)
        server = WebServer(app, web.host, web.port,
                           cert=tls.cert if tls else None, key=tls.key if tls else None)
    except OSError as exc:  # e.g. the port is taken: monitoring matters more than the page
        _LOGGER.error("web page not served: cannot listen on %s port %d (%s); monitoring goes on without it",
                      web.host, web.port, exc.strerror or exc)
        return None
    scheme = "https" if tls else "http"
    shown_host = f"[{web.host}]" if ":" in web.host else web.host
    _LOGGER.info("web page on %s://%s:%d/%s", scheme, shown_host, server.port,
                 "" if password else " (no password: this computer only)")
    return server
