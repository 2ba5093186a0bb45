"""``python -m esper_operator``: run the operator."""

import sys

from esper_operator.main import main

sys.exit(main())
