"""``python -m napari_latentseg.cli`` (how torchrun starts distributed fits)."""

import sys

from . import main

sys.exit(main())
