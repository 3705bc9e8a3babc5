import sys

from gradatim.operator.run import main

sys.exit(main())
