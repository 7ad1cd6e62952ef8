"""Sans-IO protocol core of `tunnel`.

Nothing in this package performs I/O, reads a clock or draws global randomness: time arrives as ``now``
(monotonic seconds), randomness and keys are constructor arguments, and every machine's outputs are pulled by
the caller (``datagrams_to_send(now)``, ``get_timer()``, ``next_event()``). See docs/architecture.md.
"""
