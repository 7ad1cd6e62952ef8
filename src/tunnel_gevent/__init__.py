"""tunnel_gevent: the gevent runtime adapter for tunnel_core (wait readable, drain, feed, flush once, one timer)."""
