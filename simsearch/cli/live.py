"""``add``, ``remove``, ``update``, ``compact``: live writes to an index (journalled, searchable at once)."""

from __future__ import annotations

import json

import click

from ..compact import compact_index
from ..errors import SimsearchError
from ..index import open_index
from ._common import command, main


def _attributes(attrs_json: str | None, pairs: tuple[str, ...]) -> dict:
    attrs: dict = {}
    if attrs_json:
        try:
            attrs = json.loads(attrs_json)
        except json.JSONDecodeError as e:
            raise SimsearchError(f"--attrs is not JSON: {e.msg} at character {e.pos + 1}") from None
        if not isinstance(attrs, dict):
            raise SimsearchError("--attrs must be a JSON object")
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise SimsearchError(f"--attr takes NAME=VALUE (VALUE as JSON, or plain text), not {pair!r}")
        try:
            attrs[name] = json.loads(text)
        except json.JSONDecodeError:
            attrs[name] = text
    return attrs


@main.command("add")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--key", required=True, help="The item's key (an existing key is replaced).")
@click.option("--attrs", "attrs_json", help='Attributes as a JSON object: \'{"brand": "x", "price": 20}\'.')
@click.option("--attr", "pairs", multiple=True, help="One attribute NAME=VALUE (VALUE read as JSON if it can be).")
@command
def add_cmd(index_path, images, key, attrs_json, pairs, quiet):
    """Add or replace the item KEY with its photos IMAGES and attributes (searchable at once)."""
    with open_index(index_path) as idx:
        item = idx.put(key, list(images), _attributes(attrs_json, pairs))
    return {"index": index_path, "key": key, "id": item}, f"{key}: written (id {item})"


@main.command("update")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.argument("key")
@click.option("--attrs", "attrs_json", help="Attributes to set as a JSON object (null removes one).")
@click.option("--attr", "pairs", multiple=True, help="One attribute NAME=VALUE to set; repeatable.")
@command
def update_cmd(index_path, key, attrs_json, pairs, quiet):
    """Change attributes of the item KEY without re-embedding it."""
    attrs = _attributes(attrs_json, pairs)
    if not attrs:
        raise SimsearchError("give --attrs or --attr NAME=VALUE")
    with open_index(index_path) as idx:
        item = idx.patch(key, attrs)
    return {"index": index_path, "key": key, "id": item}, f"{key}: updated"


@main.command("remove")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@click.argument("keys", nargs=-1, required=True)
@command
def remove_cmd(index_path, keys, quiet):
    """Remove the items KEYS (all or none: an unknown key removes nothing)."""
    with open_index(index_path) as idx:
        n = idx.delete(keys)
    return {"index": index_path, "removed": n}, f"{n} item(s) removed"


@main.command("compact")
@click.argument("index_path", metavar="INDEX", type=click.Path())
@command
def compact_cmd(index_path, quiet):
    """Fold the live writes into a new generation of the index (the service does this by itself)."""
    r = compact_index(index_path)
    return r, f"{r['path']}: {r['folded']} write(s) folded into generation {r['generation']} in {r['seconds']:.1f} s"
