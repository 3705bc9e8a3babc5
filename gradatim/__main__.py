import sys

from gradatim.cli import main

sys.exit(main())
