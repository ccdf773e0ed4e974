"""``python -m hfvision COMMAND ...``: the same as the ``hfvision`` command (see ``hfvision.cli``)."""

from hfvision.cli import main

main()
