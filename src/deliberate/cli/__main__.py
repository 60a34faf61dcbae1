"""`python -m deliberate.cli ...` (and `torchrun -m deliberate.cli ...`): the `deliberate` command."""

import sys

from deliberate.cli import main

sys.exit(main())
