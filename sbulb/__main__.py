import sys

from sbulb.cli import main

sys.exit(main())
