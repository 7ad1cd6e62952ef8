"""tunnel_trio: the trio runtime adapter for tunnel_core (wait readable, drain, feed, flush once, one timer)."""
