"""Runtime conformance: the same scenarios through real manual-mode tunnels for every (server, client) runtime pair."""
