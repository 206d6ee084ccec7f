"""`python -m service.cli ...`: how the embedded stack and the tests start each process."""

import sys

from service.cli.main import main

sys.exit(main())
