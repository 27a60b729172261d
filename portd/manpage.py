"""portd(1), rendered from the argparse parser: every command, option, example and exit
status ``--help`` shows, as roff. ``python -m portd.manpage > man/portd.1`` writes the
shipped copy; a test keeps it in step with the parser.
"""

from __future__ import annotations

import argparse
import functools
import sys

from portd import __version__
from portd.cli import build_parser

SEE_ALSO = "nc(1), ncat(1), socat(1), systemd.service(5), systemd.socket(5), journalctl(1)"


def escape(text: str) -> str:
    """Text safe on a roff line: backslashes, hyphens, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _block(text: str) -> list[str]:
    """Preformatted lines (usage, examples), kept as written."""
    return [".nf", *(escape(line) for line in text.splitlines()), ".fi"]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for action in parser._actions:  # argparse has no public walk of its actions
        if action.help == argparse.SUPPRESS or isinstance(
            action, argparse._SubParsersAction | argparse._HelpAction
        ):
            continue
        if action.option_strings:
            choices = "|".join(map(str, action.choices)) if action.choices else None
            metavar = action.metavar or choices or action.dest.upper()
            spelled = ", ".join(
                f"\\fB{escape(option)}\\fR"
                + (f" \\fI{escape(str(metavar))}\\fR" if action.nargs != 0 else "")
                for option in action.option_strings
            )
        else:
            spelled = f"\\fI{escape(str(action.metavar or action.dest))}\\fR"
        lines += [".TP", spelled, escape(action.help or "")]
    return lines


def commands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Each subcommand: its name, its one-line summary and its parser."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in subparsers._choices_actions}
    return [(name, helps.get(name, ""), sub) for name, sub in subparsers.choices.items()]


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole man page."""
    parser = parser or build_parser()
    out = [
        f'.TH PORTD 1 "" "portd {escape(__version__)}" "User Commands"',
        ".SH NAME",
        "portd \\- listen on ports: a daemon, a netcat for the shell, and real ports for tests",
        ".SH SYNOPSIS",
        "\\fBportd\\fR \\fICOMMAND\\fR [\\fIoptions\\fR]",
        ".br",
        "\\fBportd\\fR \\fB\\-\\-version\\fR",
        ".SH DESCRIPTION",
        escape(parser.description or ""),
        "Each command takes \\fB\\-h\\fR for its own help.",
        ".SH COMMANDS",
    ]
    for name, summary, sub in commands(parser):
        # The same page whatever the terminal: argparse would wrap at $COLUMNS.
        sub.formatter_class = functools.partial(argparse.RawDescriptionHelpFormatter, width=78)
        out += [f'.SS "portd {escape(name)}"', escape(summary) + "."]
        out += _block(sub.format_usage().strip())
        if sub.description:
            out += [".PP", escape(sub.description)]
        out += _options(sub)
        if sub.epilog:
            out += [".PP", *_block(sub.epilog)]
    out += [".SH EXIT STATUS", *_block(parser.epilog.split("\n\n", 1)[1] if parser.epilog else "")]
    out += [".SH SEE ALSO", escape(SEE_ALSO)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render())
