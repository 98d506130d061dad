"""`tunesmith ui`: the web page over tunesmith.api (app.py), its jobs (jobs.py, worker.py) and its work folder."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from tunesmith.errors import TunesmithError

LOCAL = {"localhost", "127.0.0.1", "::1"}


def is_local(host: str) -> bool:
    """Only this machine can reach `host` (a loopback name or address)."""
    if host in LOCAL:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def serve(
    workdir: str | Path = "tunesmith-ui",
    host: str = "127.0.0.1",
    port: int = 7860,
    api_key: str | None = None,
    root_path: str = "",
    max_upload_mb: int = 200,
    max_running: int = 1,
) -> None:
    """Serve the page until interrupted. Binding anywhere but this machine needs an API key."""
    import uvicorn

    from tunesmith.ui.app import create_ui_app

    key = api_key or os.environ.get("TUNESMITH_UI_KEY") or None
    if not is_local(host) and not key:
        raise TunesmithError(
            f"ui: --host {host} lets other machines reach the page and everything it can run; give --api-key KEY "
            "(or set TUNESMITH_UI_KEY), or keep the default --host 127.0.0.1"
        )
    app = create_ui_app(workdir, key, root_path, max_upload_mb, max_running)
    shown = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    address = f"http://{shown}:{port}{root_path}/" + (f"?key={key}" if key else "")
    print(
        f"tunesmith ui: open {address}  (work folder {Path(workdir).resolve()}; Ctrl+C stops the page, not its jobs)"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
