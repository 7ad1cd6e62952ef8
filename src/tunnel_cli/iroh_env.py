"""The ``TUNNEL_RS_*`` environment variables of iroh mode's E4 generation (reference 1.4).

Upstream reads them through clap's ``env =`` attributes, so they sit between the command line and the config file:
CLI > env > config > built-in default. They exist so secrets can reach a process without landing in a config
file or in ``ps`` output (the command line); that is also why nothing here keeps a value in its ``repr`` and why
error messages built from these values name the variable, never its content.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

SECRET = "TUNNEL_RS_SECRET"
AUTHORIZED_KEYS_FILE = "TUNNEL_RS_AUTHORIZED_KEYS_FILE"
PRIVATE_KEY_FILE = "TUNNEL_RS_PRIVATE_KEY_FILE"
RELAY_AUTH_TOKEN = "TUNNEL_RS_RELAY_AUTH_TOKEN"

NAMES = (SECRET, AUTHORIZED_KEYS_FILE, PRIVATE_KEY_FILE, RELAY_AUTH_TOKEN)


def _value(environ: Mapping[str, str], name: str) -> str | None:
    # clap treats an empty variable as absent; a whitespace-only one is just as useless, so it is absent too and
    # the config file (or the "Authentication requires ..." error) takes over.
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    return value


@attrs.frozen
class IrohEnv:
    """What the environment offers; ``secret`` keeps its text as given (a whole commented key file is fine)."""

    secret: str | None = attrs.field(default=None, repr=False)
    authorized_keys_file: str | None = None
    private_key_file: str | None = None
    relay_auth_token: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> IrohEnv:
        source = os.environ if environ is None else environ
        keys_file = _value(source, AUTHORIZED_KEYS_FILE)
        private_file = _value(source, PRIVATE_KEY_FILE)
        return cls(
            secret=_value(source, SECRET),
            authorized_keys_file=keys_file.strip() if keys_file is not None else None,
            private_key_file=private_file.strip() if private_file is not None else None,
            relay_auth_token=_value(source, RELAY_AUTH_TOKEN),
        )
