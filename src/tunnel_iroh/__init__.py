"""iroh mode on asyncio: a thin adapter over the PyPI ``iroh`` package (real iroh 1.x through uniffi).

Importing this package is cheap on purpose; the binding (an 18 MB shared library) is loaded by
``tunnel_iroh.ffi.load()`` only when a tunnel actually starts.
"""
