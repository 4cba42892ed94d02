"""``python -m tki_sdk.serve --model M --gallery G``: the same as ``tki serve``."""
import sys

from .cli import main

sys.exit(main())
