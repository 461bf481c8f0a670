"""``serve``: the HTTP service over one index. Option defaults come from :data:`simsearch.config.SERVE`."""

from __future__ import annotations

from dataclasses import replace

import click

from ..config.serve import SERVE
from ..errors import SimsearchError
from ._common import command, main


@main.command("serve")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.option("--host", default=SERVE.host, show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=SERVE.port, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--api-key",
    envvar=SERVE.api_key_env,
    help=f"Require this key on every route but /health [env: {SERVE.api_key_env}].",
)
@click.option(
    "--allowed-hosts",
    "allowed_hosts",
    multiple=True,
    metavar="HOST[,HOST]",
    help="Host names requests may use (repeatable or comma-separated; '*' for any) [default: the bound host and "
    "the localhost names]. Other Host headers get 400 (no DNS rebinding).",
)
@click.option(
    "--expose-paths/--hide-paths",
    default=SERVE.expose_paths,
    show_default=True,
    help="Show absolute server paths (index folder, roots, files) in responses.",
)
@click.option(
    "--allow-reload", is_flag=True, default=SERVE.allow_reload, help="Enable POST /admin/reload (serve a newer index)."
)
@click.option("--watch", type=click.FloatRange(0.1), help="Reload when the saved index changes, checking every N s.")
@click.option(
    "--max-upload-mb",
    default=SERVE.max_upload_mb,
    show_default=True,
    type=click.FloatRange(0.001),
    help="Request body limit, in MiB.",
)
@click.option(
    "--max-pixels", default=SERVE.max_pixels, show_default=True, type=click.IntRange(1), help="Refuse larger images."
)
@click.option("--access-log/--no-access-log", default=SERVE.access_log, show_default=True, help="Log every request.")
@click.option("--read-only", is_flag=True, default=SERVE.read_only, help="Refuse live writes to items.")
@click.option(
    "--compact-seconds",
    default=SERVE.compact_seconds,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Fold live writes into the index this often (and at once after --compact-writes of them).",
)
@click.option("--compact-writes", default=SERVE.compact_writes, show_default=True, type=click.IntRange(1))
@click.option(
    "--embed-threads",
    default=SERVE.embed_threads,
    show_default=True,
    type=click.IntRange(0),
    help="Cores one image embedding uses (OpenVINO); 0: all of them.",
)
@click.option(
    "--background-nice",
    default=SERVE.background_nice,
    show_default=True,
    type=click.IntRange(0, 19),
    help="How much nicer than searches live writes' embedding and compaction run (Linux; 0: as nice).",
)
@command
def serve_cmd(index_path, host, port, api_key, allowed_hosts, expose_paths, allow_reload, watch, max_upload_mb,
              max_pixels, access_log, read_only, compact_seconds, compact_writes, embed_threads, background_nice,
              quiet):  # fmt: skip
    """Serve INDEX over HTTP: search API, a search page at /, OpenAPI docs at /docs."""
    try:
        from ..server import serve  # the server extra (fastapi, uvicorn) is optional
    except ImportError as e:
        raise SimsearchError(f"the server needs extra packages ({e.name}): pip install 'simsearch[server]'") from None
    hosts = tuple(h.strip() for value in allowed_hosts for h in value.split(",") if h.strip())
    spec = replace(
        SERVE, host=host, port=port, allowed_hosts=hosts, expose_paths=expose_paths,
        allow_reload=allow_reload or bool(watch), watch_seconds=watch,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels,
        access_log=access_log and not quiet, preload=True, read_only=read_only, compact_seconds=compact_seconds,
        compact_writes=compact_writes, embed_threads=embed_threads or None, background_nice=background_nice,
    )  # fmt: skip
    click.echo(f"serving {index_path} on http://{host}:{port}/ (docs: /docs); Ctrl-C to stop", err=True)
    serve(index_path, spec, api_key=api_key or None, log_level="warning" if quiet else "info")
    return {"index": index_path, "host": host, "port": port, "stopped": True}, ""
