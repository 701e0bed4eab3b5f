"""The `pnndeploy` command group and its error handling: every user-fixable error is one line and exit 2.

The commands live beside this module, grouped by the stage they face (see
:mod:`pnndeploy.cli`); they only parse, call and render.  Heavy modules (torch, onnx, h5py) are imported inside
the commands so that `pnndeploy --help` stays fast.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import click

from pnndeploy import __version__
from pnndeploy.errors import PnnError


#: A message longer than this is cut (an echoed value that escaped its own bound must not flood the terminal).
MAX_MESSAGE_CHARS = 2000


def _one_line(text: str) -> str:
    from pnndeploy.untrusted import escape_controls

    # one line, and nothing in it a terminal would act on: a message may quote a file's text
    line = escape_controls(" ".join(str(text)[: MAX_MESSAGE_CHARS * 2].split()))
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 3] + "..."


def _usage_line(exc: click.ClickException) -> str:
    """A click usage error (bad flag value, unknown option, missing argument) as one line."""
    message = _one_line(exc.format_message()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    command = " ".join(["pnndeploy", *ctx.command_path.split()[1:]]) if ctx is not None else "pnndeploy"
    return f"pnndeploy: error: {message}; see `{command} --help`"


def _os_error_line(exc: OSError) -> str:
    """An operating-system error (unwritable folder, disk full, ...) as one line naming the file."""
    what = exc.strerror or _one_line(str(exc)) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename else ""
    return f"pnndeploy: error: {where}{what}; check the path, its permissions and the free disk space"


#: click >= 8.2 shows a group's help through this UsageError when no command is given: leave it to click.
_HELP_ERRORS = tuple(getattr(click.exceptions, name) for name in ("NoArgsIsHelpError",)
                     if hasattr(click.exceptions, name))


class PnnGroup(click.Group):
    """A click group that turns every user-fixable error into one line on stderr and exit status 2.

    PnnError, click's own usage errors and operating-system errors all become
    ``pnndeploy: error: ...``; never a traceback.  Ctrl-C unwinds (temporary
    files are removed by their ``finally``); SIGTERM removes the temporary file
    of the write in progress and exits with status 143.  Either way no partial
    output file is left.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _HELP_ERRORS:
            raise
        except click.UsageError as exc:   # options of the top-level command itself
            click.echo(_usage_line(exc), err=True)
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        previous = _install_sigterm()
        try:
            return super().invoke(ctx)
        except PnnError as exc:
            click.echo(f"pnndeploy: error: {_one_line(str(exc))}", err=True)
            sys.exit(2)
        except _HELP_ERRORS:
            raise
        except click.ClickException as exc:
            click.echo(_usage_line(exc), err=True)
            sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
        except OSError as exc:
            if exc.errno == errno.EPIPE:   # stdout closed early (`| head`): click exits quietly
                raise
            click.echo(_os_error_line(exc), err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            from pnndeploy.atomic import remove_active_temporaries

            remove_active_temporaries()   # one the interrupt left registered but not yet unwound
            click.echo("pnndeploy: interrupted; no partial output files were left", err=True)
            sys.exit(130)
        finally:
            _restore_sigterm(previous)


def _install_sigterm() -> Any:
    """On SIGTERM remove the temporary file of any write in progress and exit 143 at once.

    An exception raised from a signal handler can land in a finalizer, where Python swallows it, so
    the handler does the cleanup itself (main thread only); returns the previous handler.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        from pnndeploy.atomic import remove_active_temporaries

        remove_active_temporaries()
        try:
            os.write(2, b"pnndeploy: terminated; no partial output files were left\n")
        finally:
            os._exit(143)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return None


def _restore_sigterm(previous: Any) -> None:
    import signal

    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except (ValueError, OSError):
            pass


@click.group(cls=PnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pnndeploy")
def main() -> None:
    """Train physical neural networks with sharpness-aware training (SAT), export them once as ONNX,
    and deploy them to a fleet of chips through each chip's calibration profile.

    \b
    Typical flow:
      pnndeploy train                      # SAT on the embedded digits set -> models/model.onnx
      pnndeploy inspect models/model.onnx  # what the file holds
      pnndeploy transfer --device chipB    # map onto one chip's calibration, accuracy on that chip
      pnndeploy transfer --fleet           # every chip in device_profiles/, yield
      pnndeploy audit --fleet              # temperature and ageing tolerance; exit 1 if it fails
      pnndeploy demo                       # standard vs noise-aware vs SAT, the whole story

    Exit status: 0 success, 1 a check failed, 2 bad usage or bad input.
    """
