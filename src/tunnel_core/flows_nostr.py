"""Old name of ``tunnel_core.dialogue_nostr``, kept so embedding code written against it still imports."""

import sys

from tunnel_core import dialogue_nostr

sys.modules[__name__] = dialogue_nostr
