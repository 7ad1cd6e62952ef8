"""A gevent program that monkey-patches everything first (as most gevent programs do), then embeds a manual-mode
server and client as docs/embedding.md shows. Run by test_gevent_monkey.py in its own interpreter, because
patching cannot be undone inside the test process. Prints one "OK" line when every check passed."""

from gevent import monkey

monkey.patch_all()

from conformance.test_embedding import WAIT, echo_round_trip, run_gevent_program  # noqa: E402


def main() -> int:
    assert monkey.is_module_patched("socket") and monkey.is_module_patched("threading")
    # Everything below runs in greenlets: the console's Event, the echo server's "threads", the blocking client.
    run_gevent_program(
        lambda console: bool(console.listening.wait(WAIT)),
        lambda port: [echo_round_trip(port) for _ in range(3)],
    )
    print("OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
