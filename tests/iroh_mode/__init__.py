"""Tests of iroh mode (issue 5): the sans-IO stream machines, the CLI and key tools, and offline end-to-end
tunnels through the real iroh binding on 127.0.0.1 (direct addressing, no relays, no discovery)."""
