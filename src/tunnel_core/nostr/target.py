"""The nostr client's choice of TCP or UDP, a reference quirk (1.1): the *target* picks the protocol
(``udp://host:port``; a bare ``host:port`` is TCP) and the source's scheme must agree. Light on imports: the CLI
validates with it before any runtime loads."""

from __future__ import annotations

from tunnel_core.options import ExitCode, TunnelError
from tunnel_core.policy import PolicyError, Source, parse_source


def client_protocol(source_text: str, target_text: str) -> tuple[Source, str]:
    """The parsed source and the target without its scheme; TunnelError (usage) when they disagree."""
    target = target_text.strip()
    protocol = "tcp"
    if "://" in target:
        scheme, _, rest = target.partition("://")
        if scheme.lower() not in ("tcp", "udp"):
            raise TunnelError(f"Invalid receiver target '{target_text}'", ExitCode.USAGE)
        protocol, target = scheme.lower(), rest
    try:
        source = parse_source(source_text)
    except PolicyError as exc:
        raise TunnelError(str(exc), ExitCode.USAGE) from None
    if source.protocol != protocol:
        other = "udp" if protocol == "tcp" else "tcp"
        raise TunnelError(
            f"Source URL must use {protocol}:// scheme for {protocol.upper()} client (got '{source.protocol}://'). "
            f"Use a {other}:// target (--target {other}://host:port) for {source.protocol}://",
            ExitCode.USAGE,
        )
    return source, target
