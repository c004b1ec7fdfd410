"""``python -m repspec_zoo.cli COMMAND ...``, the same as the ``repspec-zoo`` script."""
from . import main

main()
