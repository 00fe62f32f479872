import sys

from workers.check import main

if __name__ == "__main__":
    sys.exit(main())
