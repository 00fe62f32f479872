"""The `migrate` command: `migrate db` applies the Postgres schema."""

import argparse
import json
import sys
from contextlib import closing

from migrations import runner
from workers.errors import FleetError
from workers.logs import configure_logging
from workers.settings import FleetSettings
from workers.stores import postgres


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="migrate", description="Schema and index migrations.")
    commands = parser.add_subparsers(dest="command", required=True)
    db = commands.add_parser("db", help="apply the numbered SQL files of migrations/ not applied yet")
    db.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    try:
        settings = FleetSettings()
        configure_logging(settings.log_level)
        with closing(postgres.open_connection(settings)) as conn:
            applied = runner.apply(conn)
            (current,) = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except FleetError as err:
        print(f"migrate {args.command}: error: {err}", file=sys.stderr)
        return 2
    names = [f"{m.version:04d}_{m.name}" for m in applied]
    if args.json:
        print(json.dumps({"applied": names, "schema_version": current}))
    else:
        print(f"applied {', '.join(names)}" if names else "schema up to date", f"(version {current})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
