import sys

from sbulb.bench.run import main

sys.exit(main())
