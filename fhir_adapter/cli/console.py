"""What the command line shows a person: log set-up (text or JSON lines), progress of long runs, the run
summary table, and one-line errors.

* Logs go to stderr. ``-q`` only errors, default warnings, ``-v`` info, ``-vv`` debug. ``--log-format json``
  writes one JSON object per line (``ts``, ``level``, ``logger``, ``message`` and any extra fields such as
  ``subject_id``), for log collectors.
* Progress: on a terminal a live bar (subjects done/total, resources read, ETA; redrawn twice a second; a Bulk
  export's X-Progress beside it); elsewhere (CI, a pipe, a log file) plain progress log records about every
  tenth of the subjects, and one per change of a Bulk export's X-Progress. ``-q`` hides both.
* Errors: a failure prints ``error: <what happened and what to do>`` on one line and exits 1. The stack trace
  is printed only with ``-v`` or more (issue 6: "nothing prints a stack trace unless -v"), where it helps
  whoever reads the code.
* Text from the data (subject IDs, codes, a server's messages) may hold control characters: everything this
  module prints — log lines, the bar, the summary, error lines, and the commands' own lines (:func:`say`) —
  passes through :func:`printable`, which shows each C0/C1 control character escaped (``\x1b``, ``\n``) as
  ``--log-format json`` does, so no ID can move the cursor, erase or forge a line, or retitle the terminal.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

import click

from fhir_adapter.job import exit_codes

if TYPE_CHECKING:  # rich is imported only to draw on a terminal (not for --help, logs, pipes or CI)
    from rich.progress import Progress

PROGRESS_LOGGER = "fhir_adapter.progress"
#: redraws of the live bar per second (rich's default, 10, costs a run 1.3 % of a core for as long as it runs)
BAR_REFRESHES_PER_SECOND = 2
_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_C1 = re.compile("[\x7f-\x9f]")   # what json.dumps(ensure_ascii=False) leaves as it is
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(m: re.Match[str]) -> str:
    return _SHORT.get(m.group(0)) or f"\\x{ord(m.group(0)):02x}"


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with every C0 and C1 control character (and DEL) escaped: ``\\n``, ``\\r``, ``\\t``, else
    ``\\xNN`` (ESC is ``\\x1b``); ``newlines``: line ends kept (a stack trace)."""
    return (_CONTROL_BUT_NEWLINE if newlines else _CONTROL).sub(_escaped, text)


def say(text: str, *, err: bool = False) -> None:
    """A command's line of output, its control characters escaped (:func:`printable`)."""
    click.echo(printable(text), err=err)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message``, the message's control characters escaped (a subject ID cannot forge a line or
    send the terminal a sequence); a stack trace keeps its lines."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), newlines=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; extra fields given with ``logger.info(..., extra={...})`` are kept."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS and not k.startswith("_")})
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        # C0 characters are escaped by json.dumps; C1 ones (a terminal may read U+009B as CSI) here, as \\u0080
        return _C1.sub(lambda m: f"\\u{ord(m.group(0)):04x}", json.dumps(out, ensure_ascii=False, default=str))


def _not_py4j(record: logging.LogRecord) -> bool:
    """py4j (the bridge to Spark's JVM) logs through the root logger, with a stack trace, what it meets while a
    call to the JVM is cut short — every Ctrl-C of an ``--engine spark`` run; the error that matters reaches the
    command's own one-line message. Its records are shown with ``-v``."""
    return f"{os.sep}py4j{os.sep}" not in record.pathname


def setup_logging(verbose: int, quiet: bool, fmt: str, stream: TextIO | None = None) -> None:
    """Configure the root logger once per command (replacing handlers of an earlier call)."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(stream or sys.stderr)
    if verbose == 0:
        handler.addFilter(_not_py4j)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.ERROR if quiet else logging.INFO)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class RunProgress:
    """Progress of the subjects of one run: ``start(total)`` then ``advance(subject_id)`` per subject."""

    def __init__(self, resources: Callable[[], int], *, enabled: bool = True, live: bool | None = None,
                 requests: Callable[[], int] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._resources = resources
        self._clock = clock
        self._started = 0.0
        self._requests = requests  # HTTP requests to the FHIR server (live-server runs only)
        self._enabled = enabled
        self._live = is_terminal(sys.stderr) if live is None else live
        self._bar: Progress | None = None
        self._task: Any = None
        self._total = 0
        self._done = 0
        self._log = logging.getLogger(PROGRESS_LOGGER)

    def start(self, total: int) -> None:
        self._total = total
        self._started = self._clock()
        if not self._enabled:
            return
        if self._live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("subjects"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[resources]} resources"),
                                 *([TextColumn("{task.fields[requests]} requests")] if self._requests else []),
                                 TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(),
                                 *([TextColumn("{task.fields[note]}")] if self._requests else []),
                                 console=Console(stderr=True), transient=True,
                                 refresh_per_second=BAR_REFRESHES_PER_SECOND)
            self._bar.start()
            self._task = self._bar.add_task("run", total=total, resources=0, requests=0, note="")
        else:
            self._log.info("processing %d subjects", total, extra={"subjects_total": total})

    def advance(self, subject_id: str) -> None:
        self._done += 1
        if not self._enabled:
            return
        resources = self._resources()
        requests = self._requests() if self._requests else None
        if self._bar is not None:
            self._bar.update(self._task, advance=1, resources=resources, requests=requests or 0, note="")
            return
        step = max(1, self._total // 10)
        if self._done % step == 0 or self._done == self._total:
            via = f", {requests} requests" if requests is not None else ""
            elapsed = max(0.0, self._clock() - self._started)
            eta = elapsed / self._done * (self._total - self._done)  # at the pace so far, as the bar's ETA
            self._log.info("%d/%d subjects, %d resources read%s, elapsed %s, ETA %s (last: %s)", self._done,
                           self._total, resources, via, _clock_text(elapsed), _clock_text(eta), subject_id,
                           extra={"subjects_done": self._done, "subjects_total": self._total,
                                  "resources": resources, "elapsed_s": round(elapsed, 1), "eta_s": round(eta, 1),
                                  **({"requests": requests} if requests is not None else {})})

    def note(self, text: str) -> None:
        """What the source is waiting for before the first subject (a Bulk export's X-Progress): beside the bar
        on a terminal, else one progress log record per call."""
        if not self._enabled:
            return
        if self._bar is not None:
            from rich.markup import escape

            self._bar.update(self._task, note=escape(printable(text)))   # the server's text, drawn as it is
            return
        self._log.info("Bulk export: %s", text, extra={"bulk_progress": text})

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _clock_text(seconds: float) -> str:
    """``h:mm:ss``, as the live bar shows elapsed time and ETA."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


@contextmanager
def progress(resources: Callable[[], int], *, enabled: bool,
             requests: Callable[[], int] | None = None) -> Iterator[RunProgress]:
    p = RunProgress(resources, enabled=enabled, requests=requests)
    try:
        yield p
    finally:
        p.stop()


def summary_table(title: str, rows: Sequence[tuple[str, str]], stream: TextIO | None = None) -> None:
    """The end-of-run summary: a rich table on a terminal, aligned plain text otherwise (logs, pipes, CI)."""
    stream = stream or sys.stdout
    if is_terminal(stream):
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(printable(title)), show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(Text(printable(key)), Text(printable(value)))   # text, never rich markup
        Console(file=stream).print(table)
        return
    width = max(len(k) for k, _ in rows) + 2
    for key, value in rows:
        click.echo(printable(f"{key:<{width}}{value}"), file=stream)


def unsupported_platform() -> str | None:
    """Why this machine cannot run the adapter (None: it can). It needs POSIX: ``fcntl`` file locks keep one
    run per OUT and let readers see one run's outputs (job/outlock.py, job/outswap.py, the review store)."""
    if sys.platform == "win32":
        return ("fhir-adapter needs a POSIX system such as Linux (it locks OUT with POSIX file locks); on "
                "Windows, run it in WSL 2 or a Linux container (see README.md, Quickstart)")
    return None


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is written for the person running the command."""
    from fhir_adapter.fhir import FhirError
    from fhir_adapter.fhir.server_config import ServerConfigError
    from fhir_adapter.report import ReportError
    from fhir_adapter.review.store import TamperedError
    from fhir_adapter.roster.enrollees import RosterError
    from fhir_adapter.safe_paths import UnsafePath
    from fhir_adapter.source.base import SourceError
    from fhir_adapter.study.yamlfile import MappingError

    # the same as `run` reports in one line: with -v it re-raises them here (the stack trace, then the same line)
    types: list[type[BaseException]] = [MappingError, RosterError, FhirError, ReportError, OSError,
                                        ServerConfigError, SourceError, UnsafePath, TamperedError]
    try:
        from fhir_adapter.job.connect import ConnectError

        types.append(ConnectError)
    except ImportError:  # the live-server module is optional in a stripped-down install
        pass
    return tuple(types)


def report_error(exc: BaseException, verbose: int) -> None:
    """Print a failure for a person: one line, the stack trace only with ``-v`` (or ``-vv``)."""
    if verbose >= 1:
        sys.stderr.write(printable("".join(traceback.format_exception(exc)), newlines=True))
    if isinstance(exc, user_error_types()):
        message = str(exc) or type(exc).__name__
    else:
        message = (f"internal error ({type(exc).__name__}: {exc}); this is a bug in fhir-adapter — "
                   "run again with -v for the stack trace and report it")
    say_error(f"error: {message}")


def say_error(line: str) -> None:
    """Print an error line on stderr; a reader of stderr that has gone away does not change the exit code the
    caller is about to give (a run's 3 stays 3), nor turn into a traceback."""
    try:
        click.secho(printable(line), fg="red", err=True)
    except BrokenPipeError:
        stream_closed(sys.stderr)


class AdapterCommand(click.Command):
    """A command of :class:`AdapterGroup`: it fails at once, in one line, on a platform it cannot run on (its
    ``--help`` still answers)."""

    def invoke(self, ctx: click.Context) -> Any:
        why = unsupported_platform()
        if why is not None:
            say_error(f"error: {why}")
            ctx.exit(exit_codes.FAILED)
        return super().invoke(ctx)


class AdapterGroup(click.Group):
    """A click group whose commands fail with a one-line ``error:`` message and exit code 1, and whose
    usage errors (unknown option, missing argument, a ``--config`` file that does not exist) exit 64
    (:data:`fhir_adapter.job.exit_codes.USAGE`), so that 2 keeps meaning "completed with warnings"."""

    command_class = AdapterCommand

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.UsageError as exc:
            exc.exit_code = exit_codes.USAGE  # type: ignore[misc]  # click reads it per instance
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.UsageError as exc:
            exc.exit_code = exit_codes.USAGE  # type: ignore[misc]  # click reads it per instance
            own = {o for p in self.params for o in (*p.opts, *p.secondary_opts)}
            if isinstance(exc, click.exceptions.NoSuchOption) and exc.option_name in own and exc.ctx is not None:
                # `fhir-adapter run -q`: an option of fhir-adapter itself given after the command
                where = click.exceptions.NoSuchOption(
                    exc.option_name, ctx=exc.ctx,
                    message=f"No such option '{exc.option_name}' ({exc.option_name} is an option of fhir-adapter "
                            f"itself: put it before the command, e.g. fhir-adapter {exc.option_name} "
                            f"{exc.ctx.info_name} …).")
                where.exit_code = exit_codes.USAGE  # type: ignore[misc]
                raise where from None
            raise
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:  # Ctrl-C: one line saying what became of OUT (click would print "Aborted!", exit 1)
            running = ctx.invoked_subcommand or ctx.info_name
            say_error("error: interrupted" + (": OUT keeps the previous run's outputs (a run replaces them only "
                                              "once it has finished); run the same command again"
                                              if running == "run" else ""))
            ctx.exit(exit_codes.INTERRUPTED)
        except BrokenPipeError:  # `check | head -1`: the reader has what it wanted; no error line, no traceback
            stream_closed(sys.stdout)  # (stderr's errors are said by say_error, which keeps the exit code)
            ctx.exit(exit_codes.OUTPUT_CLOSED)
        except Exception as exc:
            verbose = int((ctx.obj or {}).get("verbose", ctx.params.get("verbose") or 0))
            report_error(exc, verbose)
            ctx.exit(exit_code_of(exc))


def stream_closed(stream: TextIO) -> None:
    """Point ``stream`` (stdout or stderr, whose reader has gone) at ``os.devnull``: the interpreter's last flush
    at exit then writes nowhere instead of failing again on the closed pipe (the Python documentation's note on
    SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    except (AttributeError, OSError, ValueError):  # a stream with no descriptor (a test runner's)
        pass
    finally:
        os.close(devnull)


def exit_code_of(exc: BaseException) -> int:
    """A failure's exit code: 4 rejected credentials, 3 a server that is down or cannot be reached (connection
    refused, timeouts, 5xx after every retry, the token endpoint's 429/5xx too; not a name that does not
    resolve), else 1 — for the Bulk Data client's errors too (a 401 at kick-off, status or download is 4; a 429
    or 5xx after the retries, or a download that failed or was interrupted by such a network failure, is 3)."""
    from fhir_adapter.fhir import FhirAuthError
    from fhir_adapter.fhir.flow import is_unavailability

    if isinstance(exc, FhirAuthError) and not exc.transient:
        return exit_codes.AUTH_FAILED
    if is_unavailability(exc):
        return exit_codes.SERVER_UNAVAILABLE
    if type(exc).__name__ == "BulkExportError":  # the Bulk client (imported by Bulk runs only): its HTTP status
        from fhir_adapter.fhir.bulk import BulkExportError

        if isinstance(exc, BulkExportError) and exc.status == 401:
            return exit_codes.AUTH_FAILED  # as a 401 on the REST path
        if isinstance(exc, BulkExportError) and (exc.status in (429, 500, 502, 503, 504) or (
                exc.__cause__ is not None and is_unavailability(exc.__cause__))):
            return exit_codes.SERVER_UNAVAILABLE  # "run again later": the download resumes
    return exit_codes.FAILED
