"""Exit codes of the ``fhir-adapter`` command (docs/cli.md), and what the site does after each."""

from __future__ import annotations

OK = 0
FAILED = 1
COMPLETED_WITH_WARNINGS = 2
SERVER_UNAVAILABLE = 3
AUTH_FAILED = 4
USAGE = 64
INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped with Ctrl-C
OUTPUT_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for a command its reader stopped reading

#: code -> (meaning, what the site does next)
EXIT_CODES: dict[int, tuple[str, str]] = {
    OK: ("ok", "nothing"),
    FAILED: ("failed: bad mapping/config, unreadable source, no room for the outputs, nothing processed",
             "fix what the one-line error names, then run again"),
    COMPLETED_WITH_WARNINGS: ("completed with warnings: quarantined input, or subjects not processed / not written",
                              "read run-report.json (quarantine, subject_failures); the next run picks those "
                              "subjects up again"),
    SERVER_UNAVAILABLE: ("server unavailable: the run stopped early, completed subjects kept",
                         "run again later (same command); nothing to repair (a subject written in part, when "
                         "max_transaction_entries splits its write, is recorded and completed by the rerun)"),
    AUTH_FAILED: ("authentication failed: the run stopped; what the server confirmed is recorded",
                  "check the client id, key and scopes with the token endpoint named in the error; rerun"),
    USAGE: ("usage error on the command line", "correct the command (see --help)"),
    INTERRUPTED: ("interrupted (Ctrl-C, SIGINT): OUT keeps the previous run's outputs",
                  "run the same command again (what a server confirmed stays written; nothing is written twice)"),
    OUTPUT_CLOSED: ("the reader of the output closed it (e.g. | head): the rest was not printed",
                    "nothing, or run it again without cutting its output"),
}


def meaning(code: int) -> str:
    return EXIT_CODES[code][0] if code in EXIT_CODES else f"exit code {code}"


def help_table() -> str:
    """The table shown in ``fhir-adapter --help`` (Click's ``\\b`` keeps the lines as they are)."""
    lines = ["\b", "Exit codes (what to do next):"]
    for code, (what, then) in EXIT_CODES.items():
        lines += [f"  {code:>3}  {what}", f"       then: {then}"]
    return "\n".join(lines)
