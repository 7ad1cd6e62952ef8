"""End-to-end tests: the real `tunnel` CLI between real programs (ssh, iperf3, dig), loopback only."""
