"""How the three console scripts end on an error: a user's mistake is one line and exit 1.

    @click.group(cls=ErrorGroup, user_errors=user_errors)    the group also gets --debug

    $ patchstore build data/ -o /mnt/cdrom/shards
    Error: /mnt/cdrom/shards: can't create files here (read-only file system); expected a writable folder
    $ patchstore --debug build data/ -o /mnt/cdrom/shards     the same error with its traceback

``user_errors`` returns the exception types that are the user's to fix (bad inputs, files, a full
disk); it is called only when something was raised, so ``--help`` imports nothing heavy. Anything
else is a bug and keeps its traceback. The libraries raise; only this module speaks click.
"""

from __future__ import annotations

from collections.abc import Callable

import click

DEBUG = "patchstore.debug"  # key in click's shared ctx.meta


def one_line(e: BaseException) -> str:
    """The message of a library error; an OSError as 'file: reason'."""
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}" + (f" ({e.filename2})" if e.filename2 else "")
    return str(e) or type(e).__name__


def _set_debug(ctx: click.Context, _param, value: bool) -> None:
    ctx.meta[DEBUG] = value


class ErrorGroup(click.Group):
    """A click group whose commands turn ``user_errors()`` into one line (exit 1); ``--debug``
    shows the traceback instead."""

    def __init__(self, *args, user_errors: Callable[[], tuple[type[BaseException], ...]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user_errors = user_errors
        self.params.append(click.Option(["--debug"], is_flag=True, expose_value=False, callback=_set_debug,
                                        help="On an error, show the full traceback instead of one line."))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if ctx.meta.get(DEBUG) or not isinstance(e, self.user_errors()):
                raise
            raise click.ClickException(one_line(e)) from None
