"""Old name of ``tunnel_core.dialogue``, kept so embedding code written against it still imports."""

import sys

from tunnel_core import dialogue

sys.modules[__name__] = dialogue
