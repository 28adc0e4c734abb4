"""``python -m iterl2norm.cli``: the same as the ``iterl2norm`` command."""

import sys

from . import main

sys.exit(main())
