"""Fails loudly, naming the symbol, when a flwr upgrade moves or changes an internal fedlaunch uses:
the names, the keyword arguments it passes them, the sleeps it shortens, and the node-state fields
the pool's endpoint changes."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from launcher.shim import flwr_internals as fi


def test_every_flwr_internal_the_warm_executor_uses_exists() -> None:
    import flwr

    version = flwr.__version__  # the `flwr` or the `flwr-nightly` distribution

    gone = fi.missing()

    assert gone == [], f"flwr {version} moved: {', '.join(gone)}; update launcher/shim/flwr_internals.py"


def test_get_refuses_names_not_listed() -> None:
    try:
        fi.get("flwr.supercore.runtime", "SomethingElse")
    except KeyError as exc:
        assert "not listed" in str(exc)
    else:
        raise AssertionError("an unlisted internal was handed out")


def test_each_internal_is_looked_up_once_into_a_module_attribute() -> None:
    for name, (module, attribute) in fi.NAMES.items():
        first = getattr(fi, name)

        assert first is fi.get(module, attribute), name
        assert fi.__dict__[name] is first, f"{name} is looked up again on each use"
    try:
        fi.SomethingElse  # noqa: B018
    except AttributeError as exc:
        assert "not a listed flwr internal" in str(exc)
    else:
        raise AssertionError("an unlisted attribute was handed out")


def parameters(function: object) -> set[str]:
    return set(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_keyword_arguments_fedlaunch_passes_are_accepted() -> None:
    """Each call site's keywords (executor.py, worker.py, endpoint.py, flwr_tuning.py)."""
    expected = {
        fi.RuntimeHttpClient.from_server_address: {"server_address", "insecure",
                                                   "root_certificates", "interceptors",
                                                   "retry_invoker"},
        fi.RuntimeVersionHttpInterceptor: {"component_name"},
        fi.RuntimeTokenHttpInterceptor: {"token"},
        fi.SuperExecAuthHttpInterceptor: {"master_secret", "protected_methods"},
        fi.push_task_output: {"client", "context", "sub_status", "details"},
        fi.push_message: {"client", "message", "context"},
        fi.pull_task_input: {"client"},
        fi.install_from_fab: {"fab_file", "skip_prompt"},
        fi.get_load_client_app_fn: {"default_app_ref", "app_path", "multi_app"},
        fi.get_project_dir: {"fab_id", "fab_version", "fab_hash"},
        fi.pull_and_inflate_object_from_tree: {"initial_backoff", "backoff_cap"},
        fi.supernode_pull_objects: {"initial_backoff", "backoff_cap"},
        fi.grid_pull_objects: {"initial_backoff", "backoff_cap"},
        fi.InMemoryNodeState.create_task: {"self", "task_type", "run_id", "fab_hash"},
        fi.InMemoryNodeState.set_node_id: {"self", "node_id"},
        fi.InMemoryNodeState.store_message_and_object_tree: {"self", "message", "object_tree",
                                                             "session_id"},
        fi.InMemoryNodeState.store_object: {"self", "run_id", "session_id", "object_id",
                                            "object_content"},
        fi.push_messages: {"state", "object_store", "send", "push_object"},
        fi.pull_and_store_message: {"state", "object_store", "receive", "pull_object",
                                    "confirm_message_received"},
        fi.run_serverapp: {"runtime_api_address", "log_queue", "token", "insecure",
                           "certificates", "parent_pid", "runtime_dependency_install"},
        fi.serverapp_install: {"fab_file", "skip_prompt"},
    }
    for function, names in expected.items():
        missing = names - parameters(function)
        assert not missing, f"{function} no longer takes {sorted(missing)}"
    assert "supported_task_types" in fi.AcquireTaskRequest.DESCRIPTOR.fields_by_name
    assert fi.TaskType.CLIENT_APP and fi.SubStatus.COMPLETED and fi.SubStatus.FAILED


def test_the_sleeps_the_prompt_supernode_shortens_are_still_there() -> None:
    """launcher/shim/supernode.py's PromptTime reads a sleep of 1 s or more as the idle poll and a
    shorter one as the wait for a reply; the pool's endpoint wraps `_push_messages` and
    `_pull_and_store_message` by name."""
    module = importlib.import_module("flwr.supernode.start_client_internal")
    loop = inspect.getsource(module.start_client_internal)
    push = inspect.getsource(fi.push_messages)

    assert "time.sleep(3)" in loop, "the SuperNode's idle poll changed"
    assert "_push_messages(" in loop, "the SuperNode loop no longer calls _push_messages by name"
    assert "_pull_and_store_message(" in loop, "the SuperNode loop no longer calls it by name"
    pull = inspect.getsource(fi.pull_and_store_message)
    # Anchored on the path a normal message takes: the task is created, then the objects pulled
    # and the receipt confirmed (error branches before it confirm early and return).
    created = pull.index("state.create_task(")
    assert "pull_objects(" in pull[created:] and "confirm_message_received(" in pull[created:], \
        "the SuperNode no longer creates a task before the message's objects are in"
    assert "time.sleep(0.5)" in push, "the SuperNode's wait for a reply changed"
    assert fi.supernode_time.sleep is not None


def test_an_expired_token_fails_a_running_task_and_requeues_a_claimed_one() -> None:
    """The pool's endpoint expires the token of a task whose worker died (endpoint.expire_token),
    relying on Flower's clean-up: a running task fails at once, a claimed one is pending again."""
    from flwr.common.constant import Status
    from flwr.supercore.object_store import ObjectStoreFactory

    from launcher.shim.endpoint import expire_token

    state = fi.InMemoryNodeState(ObjectStoreFactory().store())
    for field in fi.STATE_FIELDS:
        assert hasattr(state, field), f"InMemoryNodeState has no {field}"
    running = state.create_task(task_type=fi.TaskType.CLIENT_APP, run_id=1, fab_hash="f")
    claimed = state.create_task(task_type=fi.TaskType.CLIENT_APP, run_id=1, fab_hash="f")
    assert running is not None and claimed is not None
    token, other = state.claim_task(running), state.claim_task(claimed)
    assert token and other and state.activate_task(running)

    assert expire_token(state, token) and expire_token(state, other)
    state.get_messages_legacy(is_reply=True)  # what the SuperNode loop calls every 50 ms

    done = state.get_tasks(task_ids=[running])[0].status
    assert (done.status, done.sub_status) == (Status.FINISHED, fi.SubStatus.FAILED)
    assert state.get_tasks(task_ids=[claimed])[0].status.status == Status.PENDING
    assert not expire_token(state, "no-such-token")


def test_the_serverapp_runtime_installs_the_bundle_through_its_module_name() -> None:
    """launcher.shim.serverhost checks the bundle by replacing `install_from_fab` in the
    ServerApp runtime's module; run_serverapp must look it up there, by that name."""
    source = inspect.getsource(fi.run_serverapp)
    assert "install_from_fab(fab.content" in source, "run_serverapp no longer installs the FAB so"
    assert fi.TaskType.SERVER_APP == "flwr-serverapp"  # the task type the warm ServerApp claims


def test_a_clientapps_reply_reaches_the_node_state_through_the_wrapped_method() -> None:
    """launcher/shim/supernode.py wraps `store_message_and_object_tree` to end the SuperNode's
    reply wait early: the runtime API's push_message must store replies through it (flwr 1.42
    stores with `store_message` inside it, 1.43 with `store_messages([...])`)."""
    handlers = importlib.import_module("flwr.supernode.servicer.runtime.runtime_handlers")
    source = inspect.getsource(handlers)

    assert "state.store_message_and_object_tree(" in source, "replies are stored another way"


def test_every_reliance_on_flower_is_where_the_table_says_and_tested() -> None:
    from launcher.shim.flwr_reliances import RELIANCES

    root = Path(__file__).resolve().parents[1]
    for reliance in RELIANCES:
        text = (root / reliance.where).read_text()
        assert reliance.needle in text, f"{reliance.where} no longer has {reliance.needle!r}"
        test_file, _, test_name = reliance.test.partition("::")
        tests = (root / test_file).read_text()
        assert not test_name or f"def {test_name}(" in tests, f"{reliance.test} is gone"

