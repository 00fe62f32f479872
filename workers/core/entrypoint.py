"""The shared shape of our command-line entry points: settings read once, errors said plainly.

A command gets the parsed arguments and the settings. Exit codes: 0 done; 1 a failure (a
service down or failing, work that could not finish); 2 a usage or configuration error (a bad
argument, a setting that does not validate); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
Errors are one line on stderr that says what to do, never a traceback. SIGTERM unwinds like
Ctrl-C, so that what the command started (the embedded Postgres, parser processes) stops too.
"""

import argparse
import signal
import sys

from pydantic import ValidationError

from workers.core.errors import ConfigError, FleetError, InvalidInput
from workers.core.failures import Failure, classify, explain, service_of
from workers.core.logs import configure_logging
from workers.core.settings import FleetSettings

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding the command as Ctrl-C does."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def run_command(prog: str, args: argparse.Namespace) -> int:
    """Run `args.run(args, settings)` for the `prog` command line."""
    where = f"{prog} {args.command}"
    try:
        settings = FleetSettings()
    except ValidationError as err:
        print(f"{where}: error: invalid setting ({describe_invalid_settings(err)})", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.run(args, settings)
    except FleetError as err:
        print(f"{where}: error: {err}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, InvalidInput | ConfigError) else EXIT_FAILURE
    except Terminated:
        print(f"{where}: terminated; run it again to carry on where it stopped", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"{where}: interrupted; run it again to carry on where it stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        # A backing service that failed mid-command (restart, network): say so, without a traceback.
        if service_of(err) is None:
            raise
        advice = {
            Failure.OUTAGE: "check that it is up and run the command again",
            Failure.RETRY_ONCE: "run the command again",
        }.get(classify(err), "run the command again; if it fails the same way, report it with this line")
        print(f"{where}: error: {explain(err)}; {advice}", file=sys.stderr)
        return EXIT_FAILURE


def describe_invalid_settings(err: ValidationError) -> str:
    """The settings that did not validate, each with why, on one line."""
    problems = []
    for error in err.errors():
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"FLEET_{'_'.join(map(str, error['loc'])).upper()}: {message}" if error["loc"] else message)
    return "; ".join(problems)
