import sys

from usnav.cli import main

sys.exit(main())
