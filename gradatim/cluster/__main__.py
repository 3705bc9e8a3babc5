import sys

from gradatim.cluster.cli import main

sys.exit(main())
