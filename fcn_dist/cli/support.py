"""Click plumbing shared by every ``fcn-*`` CLI: each error is one ``error: ...`` line on stderr.

Usage errors and :class:`~fcn_dist.errors.SpecError` exit 2; runtime failures (unknown job,
unreachable Redis) exit 1. A CLI whose user errors are all about its input (``fcn-data``,
``fcn-bench``) passes ``fcn_error_code=2``. No traceback reaches the user.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, TypeVar

import click

from fcn_dist import config
from fcn_dist.errors import FcnError, SpecError

F = TypeVar("F", bound=Callable[..., Any])


def _fail(msg: str, code: int) -> None:
    msg = " ".join(str(msg).split()) or "failed"
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


class _OneLineErrors:
    def __init__(self, *args: Any, fcn_error_code: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.fcn_error_code = fcn_error_code  # exit status of an FcnError (not a SpecError)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,  # type: ignore[misc]
                              standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            _fail("aborted", 1)
        except click.UsageError as e:
            hint = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
            _fail(e.format_message() + hint, 2)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code or 1)
        except SpecError as e:
            _fail(str(e), 2)
        except FcnError as e:
            _fail(str(e), self.fcn_error_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
            logging.getLogger("fcn_dist.cli").debug("unexpected error", exc_info=True)
            _fail(f"{type(e).__name__}: {e}", 1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


class Command(_OneLineErrors, click.Command):
    """A click command whose errors are one line."""


class Group(_OneLineErrors, click.Group):
    """A click group whose errors (its subcommands' included) are one line."""


def redis_options(f: F) -> F:
    """``--redis-url`` and ``--prefix`` of the queue, resolved through :mod:`fcn_dist.config`
    (flag, else ``$FCN_REDIS_URL`` / ``$FCN_REDIS_PREFIX``, else the local default)."""
    f = click.option("--prefix", default=None, show_default="fcn: or $FCN_REDIS_PREFIX",
                     callback=lambda _ctx, _param, v: config.redis_prefix(v),
                     help="Key prefix of the queue.")(f)
    return click.option("--redis-url", default=None, metavar="URL",
                        callback=lambda _ctx, _param, v: config.redis_url(v),
                        help="Redis URL (default $FCN_REDIS_URL).")(f)


def setup_output(log_level: str = "INFO", verbose: bool = False) -> None:
    """Quiet by default: our own lines (``fcn_dist`` loggers at ``log_level``) with a short
    timestamp, other libraries at WARNING. ``verbose`` (or ``--log-level debug``) also lets
    Ray's output through (``FCN_VERBOSE=1``, inherited by the Ray driver in this process)."""
    import os

    level = getattr(logging, log_level.upper())
    if verbose or level <= logging.DEBUG:
        os.environ["FCN_VERBOSE"] = "1"
    logging.basicConfig(level=logging.INFO if os.environ.get("FCN_VERBOSE") == "1" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s"
                        if level <= logging.DEBUG else "%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("fcn_dist").setLevel(level)
