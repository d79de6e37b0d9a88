import sys

from resgrad.cli import main

sys.exit(main())
