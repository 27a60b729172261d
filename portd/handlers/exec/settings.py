"""exec's options and what is checked at load: the command (an argv list, or a string for
``/bin/sh -c`` with ``shell = true``), where the program is found, its directory,
environment and user, so ``portd check`` refuses what ``portd serve`` would.

Checks need no event loop and touch nothing: they read passwd and group, stat the
directory and search PATH for the program.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from portd.errors import OptionError
from portd.options import Option, Settings

SHELL = "/bin/sh"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
STDERR_MODES = ("log", "null", "connection")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_ARGUMENTS = 4096
MAX_ARGUMENT_BYTES = 128 * 1024  # MAX_ARG_STRLEN: the kernel refuses a longer one (E2BIG)


def check_command(value: Any) -> list[str] | str:
    """An argv list of non-empty strings, or a string (a shell command, checked with
    ``shell``); no NUL anywhere (exec cannot pass one)."""
    if isinstance(value, str):
        if not value.strip() or "\0" in value:
            raise OptionError("expected a non-empty shell command without NUL")
        return value
    if (
        not isinstance(value, list)
        or not value
        or len(value) > MAX_ARGUMENTS
        or not all(isinstance(word, str) for word in value)
        or not value[0]
    ):
        raise OptionError('expected an argv list such as ["/usr/bin/wc", "-c"]')
    if any("\0" in word or len(word.encode()) > MAX_ARGUMENT_BYTES for word in value):
        raise OptionError("an argument holds a NUL or is longer than 128 KiB")
    return list(value)


def check_env(value: Any) -> dict[str, str]:
    """A table of NAME = "text"."""
    if not isinstance(value, dict):
        raise OptionError('expected a table such as { LANG = "C.UTF-8" }')
    for name, text in value.items():
        if not ENV_NAME.fullmatch(name):
            raise OptionError(f"{name!r} is not a variable name (A-Z a-z 0-9 _)")
        if not isinstance(text, str) or "\0" in text:
            raise OptionError(f"{name}: expected a string without NUL")
    return dict(value)


def check_cwd(value: Any) -> str:
    """An absolute path (the daemon's own directory is no anchor)."""
    if not isinstance(value, str) or (value and (not value.startswith("/") or "\0" in value)):
        raise OptionError("expected an absolute directory path")
    return value


EXEC_OPTIONS = (
    Option("command", object, None, 'argv list, or a string with shell = true', required=True,
           convert=check_command),
    Option("shell", bool, False, "run a string command under /bin/sh -c"),
    Option("cwd", str, "", "the program's working directory (default: portd's)",
           convert=check_cwd),
    Option("env", object, {}, "variables added to the minimal environment", convert=check_env),
    Option("inherit_env", bool, False, "start from portd's whole environment instead"),
    Option("user", str, "", "run the program as this user (name or uid; portd must be root)"),
    Option("group", str, "", "with or without user: this group (default: the user's)"),
    Option("stderr", str, "log", "the program's stderr: logged lines, discarded, or the "
           "connection", choices=STDERR_MODES),
    Option("timeout_s", float, 0.0, "kill the program after this long (0: never)",
           minimum=0, maximum=86400 * 7),
    Option("kill_grace_s", float, 5.0, "from SIGTERM or SIGHUP to SIGKILL",
           minimum=0.001, maximum=3600),
    Option("relay", bool, False, "always relay the bytes through portd, never hand the "
           "program the socket"),
)  # fmt: skip


class Identity(NamedTuple):
    """Whom the program runs as: ids for setuid, and the variables that name them."""

    uid: int | None
    gid: int | None
    name: str = ""
    home: str = ""
    shell: str = ""


def command_argv(settings: Settings) -> list[str]:
    """The argv to run: the list itself, or ``/bin/sh -c STRING``."""
    command = settings["command"]
    return [SHELL, "-c", command] if isinstance(command, str) else list(command)


def child_path(settings: Settings) -> str:
    """The PATH the program gets, and that its name is looked up in."""
    env: Mapping[str, str] = settings.get("env") or {}
    if "PATH" in env:
        return env["PATH"]
    if settings.get("inherit_env"):
        return os.environ.get("PATH", DEFAULT_PATH)
    return DEFAULT_PATH


def find_program(name: str, path: str) -> str | None:
    """The executable ``name`` names (absolute or relative: as given; a bare name: the
    first in ``path``), or None."""
    if "/" in name:
        return name if _is_executable(name) else None
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)  # noqa: PTH118 - a string is wanted
        if _is_executable(candidate):
            return candidate
    return None


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)  # noqa: PTH113


def resolve_identity(settings: Settings) -> Identity:
    """``user``/``group`` as ids, with the passwd entry's name, home and shell.

    Raises:
        OptionError: an unknown user or group.
    """
    import grp
    import pwd

    user, group = settings.get("user", ""), settings.get("group", "")
    uid = gid = None
    entry = None
    if user:
        try:
            entry = pwd.getpwuid(int(user)) if _numeric(user) else pwd.getpwnam(user)
        except KeyError:
            if not _numeric(user):
                raise OptionError(f"user = {user!r}: no such user") from None
        except OverflowError:
            raise OptionError(f"user = {user!r}: not a uid") from None
        uid = entry.pw_uid if entry is not None else int(user)
        gid = entry.pw_gid if entry is not None else uid
    if group:
        try:
            gid = int(group) if _numeric(group) else grp.getgrnam(group).gr_gid
        except KeyError:
            raise OptionError(f"group = {group!r}: no such group") from None
    if entry is None:
        return Identity(uid, gid)
    return Identity(uid, gid, entry.pw_name, entry.pw_dir, entry.pw_shell)


def _numeric(text: str) -> bool:
    return text.isascii() and text.isdigit()


def settings_problems(settings: Settings) -> list[str]:
    """Every problem ``ExecHandler.__init__`` would raise, without side effects."""
    problems: list[str] = []
    command = settings.get("command")
    if isinstance(command, str) and not settings.get("shell"):
        problems.append(
            f"command = {command!r}: a string runs under /bin/sh -c only with shell = true; "
            "without a shell give an argv list, such as " + _as_list(command)
        )
    elif isinstance(command, list) and settings.get("shell"):
        problems.append("shell = true takes command as one string for /bin/sh -c")
    elif command is not None:
        name = command_argv(settings)[0]
        if find_program(name, child_path(settings)) is None:
            where = "" if "/" in name else f" in PATH ({child_path(settings)})"
            problems.append(f"command: {name!r} is not an executable file{where}")
    cwd = settings.get("cwd")
    if cwd and not os.path.isdir(cwd):  # noqa: PTH112
        problems.append(f"cwd = {cwd!r}: not a directory")
    problems += _identity_problems(settings)
    return problems


def _identity_problems(settings: Settings) -> list[str]:
    if not (settings.get("user") or settings.get("group")):
        return []
    try:
        identity = resolve_identity(settings)
    except OptionError as exc:
        return [str(exc)]
    if os.geteuid() != 0 and (identity.uid not in (None, os.geteuid())
                              or identity.gid not in (None, os.getegid())):  # fmt: skip
        who = settings.get("user") or settings.get("group")
        return [
            f"user/group {who!r}: running the program as another user needs portd to run "
            f"as root (it runs as uid {os.geteuid()})"
        ]
    return []


def _as_list(command: str) -> str:
    import json
    import shlex

    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return json.dumps(words)
