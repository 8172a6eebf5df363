"""``python -m napari_mirnet.cli``: the ``napari-mirnet`` command."""

import sys

from . import main

sys.exit(main())
