"""``serve``: the HTTP service over one index."""

from __future__ import annotations

import click

from ..errors import SimsearchError
from ._common import command, main


@main.command("serve")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--api-key",
    envvar="SIMSEARCH_API_KEY",
    help="Require this key on every route but /health [env: SIMSEARCH_API_KEY].",
)
@click.option("--allow-reload", is_flag=True, help="Enable POST /admin/reload (serve a newer saved index).")
@click.option("--watch", type=click.FloatRange(0.1), help="Reload when the saved index changes, checking every N s.")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(0.001), help="Upload limit.")
@click.option(
    "--max-pixels", default=40_000_000, show_default=True, type=click.IntRange(1), help="Refuse larger images."
)
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="Log every request.")
@command
def serve_cmd(index_path, host, port, api_key, allow_reload, watch, max_upload_mb, max_pixels, access_log, quiet):
    """Serve INDEX over HTTP: search API, a search page at /, OpenAPI docs at /docs."""
    try:
        from ..server import serve
    except ImportError as e:
        raise SimsearchError(f"the server needs extra packages ({e.name}): pip install 'simsearch[server]'") from None
    click.echo(f"serving {index_path} on http://{host}:{port}/ (docs: /docs); Ctrl-C to stop", err=True)
    serve(
        index_path, host=host, port=port, api_key=api_key or None, allow_reload=allow_reload or bool(watch),
        watch_seconds=watch, max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels,
        access_log=access_log and not quiet, log_level="warning" if quiet else "info",
    )  # fmt: skip
    return {"index": index_path, "host": host, "port": port, "stopped": True}, ""
