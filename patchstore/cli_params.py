"""Click parameters the console scripts share: a shard folder or its URL, and the download cache.

    SHARDS            shards/                 an existing folder (checked as click.Path does)
                      https://host/shards     a URL, passed on as a string (any scheme://)
    --cache DIR       where a URL's files are kept (default: $XDG_CACHE_HOME/patchstore or
                      ~/.cache/patchstore)
"""

from __future__ import annotations

from pathlib import Path

import click

from patchstore.files import is_url


class ShardSource(click.ParamType):
    """A shard folder that exists (a Path), or the URL of one (a str)."""

    name = "folder|url"

    def convert(self, value, param, ctx):
        if is_url(value):
            return value
        return click.Path(exists=True, file_okay=False, path_type=Path).convert(value, param, ctx)


cache_option = click.option(
    "--cache", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
    help="Where the files of a shard folder given by URL are kept, each checked against the manifest's "
         "SHA-256 (default: $XDG_CACHE_HOME/patchstore or ~/.cache/patchstore).")
