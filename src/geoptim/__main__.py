import sys

from geoptim.cli import main

sys.exit(main())
