"""The shared shape of our command-line entry points: settings read once, errors said plainly.

A command gets the parsed arguments and the settings; what it raises as a FleetError, or a
setting that does not validate, becomes one line on stderr and exit code 2, never a traceback.
"""

import argparse
import sys

from pydantic import ValidationError

from workers.errors import FleetError
from workers.logs import configure_logging
from workers.settings import FleetSettings

_SERVICE_LIBRARIES = {"psycopg": "Postgres", "pymilvus": "Milvus", "redis": "Redis", "kombu": "the broker"}


def run_command(prog: str, args: argparse.Namespace) -> int:
    """Run `args.run(args, settings)` for the `prog` command line."""
    where = f"{prog} {args.command}"
    try:
        settings = FleetSettings()
    except ValidationError as err:
        problems = "; ".join(f"FLEET_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in err.errors())
        print(f"{where}: error: invalid setting ({problems})", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return args.run(args, settings)
    except FleetError as err:
        print(f"{where}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # A backing service that failed mid-command (restart, network): say so, without a traceback.
        if type(err).__module__.split(".")[0] not in _SERVICE_LIBRARIES:
            raise
        print(
            f"{where}: error: {_SERVICE_LIBRARIES[type(err).__module__.split('.')[0]]} failed ({err}); "
            "check that it is up and run the command again",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"{where}: interrupted; run it again to carry on where it stopped", file=sys.stderr)
        return 130
