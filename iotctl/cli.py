"""The root command and `main()`, the one place where errors become exit codes."""

from __future__ import annotations

import sys

import click

from iotctl import __version__
from iotctl.errors import ExitCode, IotctlError, OutputClosed
from iotctl.groups import LazyGroup
from iotctl.registry import PROTOCOLS

GROUPS = {
    **{p.name: (p.group, p.help) for p in PROTOCOLS.values()},
    "bench": ("iotctl.commands.bench:command", "Load a broker and measure rates, latency percentiles and loss."),
    "check": ("iotctl.commands.check:command", "Connect to a URL and report what the server is and allows."),
    "bridge": ("iotctl.commands.bridge:command", "Carry messages from any protocol into any other (SOURCE_URL TARGET_URL)."),
    "watch": ("iotctl.commands.watch:command", "A live tree of the addresses any source delivers (SOURCE_URL)."),
    "profile": ("iotctl.commands.profile:group", "Manage connection profiles (TOML, one per file)."),
    "completion": ("iotctl.commands.completion:command", "Print the shell completion script."),
}

CONTEXT = {"help_option_names": ["--help"], "max_content_width": 100}


def _root_params():
    from iotctl.options import global_params

    return global_params(root=True)


@click.group(cls=LazyGroup, lazy=GROUPS, context_settings=CONTEXT, params=_root_params(),
             epilog="Exit status: 0 ok, 1 error, 2 usage, 3 connect, 4 auth, 5 timeout, "
                    "6 peer error, 7 TLS, 130 interrupted. See 'man iotctl'.")
@click.version_option(__version__, "--version", prog_name="iotctl", message="%(prog)s %(version)s")
def cli():
    """iotctl: one tool for the IoT and messaging protocols.

    Global options go before the protocol or after the command:
    'iotctl -o json mqtt sub -t x' is 'iotctl mqtt sub -t x -o json'.
    """


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    debug = _debug_requested(argv)
    try:
        result = cli.main(args=argv, prog_name="iotctl", standalone_mode=False)
        sys.stdout.flush()  # what help, check, bench... printed: a full disk is said here, not at exit
        return result if isinstance(result, int) else ExitCode.OK
    except OutputClosed:
        return ExitCode.OK
    except IotctlError as exc:
        _trace(debug)
        _error(exc.what, exc.why, exc.hint)
        return exc.code
    except click.exceptions.NoArgsIsHelpError as exc:
        sys.stdout.write(exc.ctx.get_help() + "\n")
        return ExitCode.OK
    except click.UsageError as exc:
        _trace(debug)
        hint = None
        if exc.ctx is not None:
            hint = f"try '{exc.ctx.command_path} --help'"
        message = exc.format_message()
        if message.startswith("Option '-h' requires an argument"):
            # the mosquitto habit: -h is the host in every protocol command, --help is help
            message += " (-h is the host here; use --help)"
        _error(message, None, hint)
        return ExitCode.USAGE
    except click.ClickException as exc:
        _trace(debug)
        _error(exc.format_message())
        return ExitCode.ERROR
    except (KeyboardInterrupt, click.Abort) as exc:
        # the line after the terminal's ^C; click's main has written it when it turned
        # a KeyboardInterrupt into Abort
        if not isinstance(exc.__cause__ or exc.__context__, (KeyboardInterrupt, EOFError)):
            sys.stderr.write("\n")
        _error("interrupted")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        from iotctl.output import _quiet_broken_pipe

        _quiet_broken_pipe()
        return ExitCode.OK
    except Exception as exc:  # the last resort: one line, traceback only with --debug
        _trace(debug)
        if isinstance(exc, OSError) and _output_failed(exc):
            from iotctl.output.writers import output_error

            error = output_error(exc)
            _error(error.what, error.why)
            return ExitCode.ERROR
        _error(f"unexpected {type(exc).__name__}", str(exc) or None,
               None if debug else "run again with -d/--debug for the traceback")
        return ExitCode.ERROR


def _output_failed(exc: OSError) -> bool:
    """True for what a full disk or a quota makes of a write (ENOSPC, EDQUOT, EFBIG)
    that no writer reported: text that click, rich or print wrote to stdout (the files
    iotctl writes say so themselves, with their names). stdout is then pointed at
    /dev/null, so that the interpreter's last flush at exit stays quiet."""
    import errno

    if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return False
    from iotctl.output import _quiet_broken_pipe

    _quiet_broken_pipe()
    return True


def _debug_requested(argv: list[str] | None) -> bool:
    import os

    args = sys.argv[1:] if argv is None else argv
    if "--" in args:
        args = args[: args.index("--")]
    if any(a in ("-d", "--debug", "--verbose") for a in args):
        return True
    return any(os.environ.get(v, "") not in ("", "0") for v in ("IOTCTL_DEBUG", "IOTCTL_VERBOSE"))


def _trace(debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc(file=sys.stderr)


def _error(what: str, why: str | None = None, hint: str | None = None) -> None:
    from iotctl.express import error  # the one formatting of the error line (the express lane's too)

    error(what, why, hint)
