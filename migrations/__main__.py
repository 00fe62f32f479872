import sys

from migrations.cli import main

sys.exit(main())
