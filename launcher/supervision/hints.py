"""One-line causes and fixes for known failures in a process's log tail."""

from __future__ import annotations

from collections.abc import Iterable

TOKEN_REFUSED = "task-token authentication failed"  # Flower's words for an expired task token

HINTS = (
    ((TOKEN_REFUSED,),
     "the ServerApp was starved of CPU past Flower's heartbeat window (30 s to start its task), "
     "so the SuperLink refused its task token: the machine is overloaded; run fewer --clients "
     "or --workers, or a smaller --model, or free the CPU"),
    (("IP address mismatch", "Hostname mismatch"),
     "the SuperLink's certificate does not name the address given to --join; join with a name "
     "it lists, or remake it on the server: fedlaunch certs DIR --host THAT_NAME --force"),
    (("CERTIFICATE_VERIFY_FAILED",),
     "the SuperLink's certificate is not signed by a CA this client trusts; pass "
     "--root-certificates ca.crt (copied from the server's `fedlaunch certs` folder)"),
    (("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure"),
     "this client uses TLS but the SuperLink runs --insecure; use TLS (or --insecure) on both"),
    (("Server disconnected without sending a response",),
     "the SuperLink closed the connection: it may expect TLS while this client is --insecure"),
    (("Connection refused", "Name or service not known", "No route to host"),
     "nothing answers at the SuperLink address; check HOST:PORT, that the server runs, and "
     "the firewall"),
)


def explain_failure(lines: Iterable[str]) -> str | None:
    """A one-line cause and fix for a client's log tail, when a known connection failure is in it."""
    text = "\n".join(lines)
    for needles, hint in HINTS:
        if any(needle in text for needle in needles):
            return hint
    return None
