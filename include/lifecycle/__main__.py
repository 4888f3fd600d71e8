"""`python -m lifecycle check <pipeline.yaml>` and `python -m lifecycle run <dag_id> <date>`."""

import sys

from lifecycle.devtools.cli import main

sys.exit(main())
