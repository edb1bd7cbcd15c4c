"""`python -m tsfmd` is the same as the `tsfmd` console script."""
import sys

from tsfmd.cli import main

sys.exit(main())
