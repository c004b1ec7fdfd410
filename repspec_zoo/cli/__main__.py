"""``python -m repspec_zoo.cli COMMAND ...``, the same as the ``repspec-zoo`` script."""
import sys

from . import main

sys.exit(main())
