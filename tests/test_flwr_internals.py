"""Fails loudly, naming the symbol, when a flwr upgrade moves an internal the warm client uses."""

from __future__ import annotations

import importlib.metadata

from launcher.shim import flwr_internals


def test_every_flwr_internal_the_warm_executor_uses_exists() -> None:
    version = importlib.metadata.version("flwr")

    gone = flwr_internals.missing()

    assert gone == [], f"flwr {version} moved: {', '.join(gone)}; update launcher/shim/flwr_internals.py"


def test_get_refuses_names_not_listed() -> None:
    try:
        flwr_internals.get("flwr.supercore.runtime", "SomethingElse")
    except KeyError as exc:
        assert "not listed" in str(exc)
    else:
        raise AssertionError("an unlisted internal was handed out")
