import sys

from framecap_core.cli import main

sys.exit(main())
