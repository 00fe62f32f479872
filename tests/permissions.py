"""Unreadable files for tests that run as root: root reads everything, unless the process drops
the capabilities that let it (`setpriv`, util-linux), keeping its uid and its files."""

import os
import shutil

from tests.conftest import require

_ROOT_POWERS = "-dac_override,-dac_read_search"


def without_root_powers() -> list[str]:
    """A command prefix under which file permissions apply to this user, root included."""
    if os.geteuid() != 0:
        return []
    require(shutil.which("setpriv") is not None, "setpriv (util-linux) is needed to test unreadable files as root")
    return ["setpriv", "--bounding-set", _ROOT_POWERS, "--inh-caps", _ROOT_POWERS]
