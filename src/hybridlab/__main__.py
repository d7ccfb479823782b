"""`python -m hybridlab ...`: the CLI by the interpreter's path, as the workflow's rules call it."""

import sys

from hybridlab.cli import main

sys.exit(main())
