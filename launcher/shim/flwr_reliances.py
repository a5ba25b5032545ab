"""Every way fedlaunch leans on Flower beyond its public API, besides the names in flwr_internals.

`flwr_internals.NAMES` holds the internal symbols fedlaunch imports. This table lists what a
name alone does not show: methods and module attributes fedlaunch replaces at run time, private
state it reads or changes, Flower loops it re-implements, route and method lists it copies, log
wording it matches, and sleeps it shortens. Each row says where fedlaunch does it and which test
exercises it, so a Flower upgrade is checked row by row (tests/test_flwr_internals.py walks the
table: each `where` file must mention its `needle`; each `test` must exist).
"""

from __future__ import annotations

from typing import NamedTuple


class Reliance(NamedTuple):
    kind: str  # patch | private | copy | route | wording | sleep
    flower: str  # the Flower thing relied on
    where: str  # the fedlaunch file that relies on it
    needle: str  # text in `where` that marks the reliance
    test: str  # tests/FILE.py::NAME that exercises it on the real path


RELIANCES: tuple[Reliance, ...] = (
    # -- patched methods and module attributes (replaced at run time) --
    Reliance("patch", "InMemoryNodeState.store_message_and_object_tree (a ClientApp's reply)",
             "launcher/shim/supernode.py", "store_message_and_object_tree",
             "tests/test_e2e.py::test_federated_run_completes_and_leaves_nothing_running"),
    Reliance("patch", "InMemoryNodeState.store_object", "launcher/shim/supernode.py",
             "state_class.store_object =",
             "tests/test_e2e.py::test_federated_run_completes_and_leaves_nothing_running"),
    Reliance("patch", "InMemoryNodeState.set_node_id", "launcher/shim/supernode.py",
             "state_class.set_node_id =", "tests/test_supernode.py"),
    Reliance("patch", "FleetHttpClient.ActivateNode (retry on 412)", "launcher/shim/supernode.py",
             "client_class.ActivateNode =",
             "tests/test_remote.py::test_a_join_of_four_clients_on_one_worker_signs_each_in_with_its_key"),
    Reliance("patch", "flwr.supernode.start_client_internal.time (the loop's sleeps)",
             "launcher/shim/supernode.py", "module.time = PromptTime",
             "tests/test_flwr_internals.py::test_the_sleeps_the_prompt_supernode_shortens_are_still_there"),
    Reliance("patch", "flwr.supernode.start_client_internal.time (pool endpoint)",
             "launcher/shim/hostparts.py", "loop.time = supernode.PromptTime", "tests/test_pool.py"),
    Reliance("patch", "start_client_internal._pull_and_store_message", "launcher/shim/endpoint.py",
             "module._pull_and_store_message =", "tests/test_pool.py"),
    Reliance("patch", "start_client_internal._push_messages", "launcher/shim/endpoint.py",
             "module._push_messages =", "tests/test_pool.py"),
    Reliance("patch", "InMemoryNodeState.create_task", "launcher/shim/endpoint.py",
             "state_class.create_task =", "tests/test_pool.py"),
    Reliance("patch", "run_clientapp.pull_and_inflate_object_from_tree (backoff)",
             "launcher/shim/executor.py", "module.pull_and_inflate_object_from_tree =",
             "tests/test_e2e.py::test_federated_run_completes_and_leaves_nothing_running"),
    Reliance("patch", "run_clientapp.pull_and_inflate_object_from_tree (cache)",
             "launcher/shim/worker.py", "module.pull_and_inflate_object_from_tree =",
             "tests/test_worker_cache.py"),
    Reliance("patch", "pull_objects in http_grid and start_client_internal (backoff)",
             "fedcore/flwr_tuning.py", 'vars(module)["pull_objects"] =',
             "tests/test_e2e.py::test_federated_run_completes_and_leaves_nothing_running"),
    Reliance("patch", "run_serverapp's module-level install_from_fab (bundle check)",
             "launcher/shim/serverhost.py", "runtime.install_from_fab = checked_install",
             "tests/test_flwr_internals.py::test_the_serverapp_runtime_installs_the_bundle_through_its_module_name"),
    Reliance("patch", "retry invoker's should_giveup", "launcher/shim/serverhost.py",
             "retry.should_giveup =",
             "tests/test_e2e.py::test_federated_run_completes_and_leaves_nothing_running"),
    Reliance("patch", "fastapi.dependencies.utils.run_in_threadpool (SuperNode runtime API)",
             "launcher/shim/supernode.py", "resolve.run_in_threadpool = inline",
             "tests/test_supernode.py"),
    Reliance("patch", "sys.modules['flwr.server.superlink.fleet.vce.backend.raybackend'] "
             "(start_vce's backend, the simulation engine's seam)", "launcher/shim/flwr_internals.py",
             "sys.modules[RAYBACKEND_MODULE] = stand_in",
             "tests/test_simulation_seam.py::test_start_vce_still_imports_its_backend_where_the_seam_expects_it"),
    # -- private state read or changed --
    Reliance("private", "InMemoryNodeState.lock_task_store, task_token_to_task_id, "
             "task_token_store", "launcher/shim/endpoint.py", "lock_task_store",
             "tests/test_flwr_internals.py::test_an_expired_token_fails_a_running_task_and_requeues_a_claimed_one"),
    Reliance("private", "task record's active_until", "launcher/shim/endpoint.py",
             "record.active_until",
             "tests/test_flwr_internals.py::test_an_expired_token_fails_a_running_task_and_requeues_a_claimed_one"),
    Reliance("private", "sys.modules['flwr.supernode.runtime.run_clientapp'] attributes",
             "launcher/shim/executor.py", 'sys.modules["flwr.supernode.runtime.run_clientapp"]',
             "tests/test_e2e.py::test_federated_run_completes_and_leaves_nothing_running"),
    # -- Flower loops fedlaunch re-implements --
    Reliance("copy", "flwr-clientapp's task loop (run_clientapp: acquire, pull input, run, push)",
             "launcher/shim/executor.py", "fi.pull_task_input(client)",
             "tests/test_e2e.py::test_federated_run_completes_and_leaves_nothing_running"),
    Reliance("copy", "flwr-clientapp's task loop, per pooled worker", "launcher/shim/worker.py",
             "run_clientapp", "tests/test_pool.py"),
    Reliance("copy", "flwr-serverapp's task claim (AcquireTask for SERVER_APP)",
             "launcher/shim/serverhost.py", "fi.TaskType.SERVER_APP",
             "tests/test_e2e.py::test_federated_run_completes_and_leaves_nothing_running"),
    Reliance("copy", "the simulation Backend's interface (build, num_workers, is_worker_idle, "
             "process_message, terminate), duck-typed", "launcher/shim/simpool.py",
             "class PoolBackend",
             "tests/test_simulation_seam.py::"
             "test_flowers_simulation_loop_runs_the_installed_backend_and_keeps_each_nodes_state"),
    # -- routes and method names copied from Flower --
    Reliance("route", "the Fleet API paths of flwr/supernode/fleet_http_client.py",
             "launcher/network/gateway.py", "FLEET_ROUTES",
             "tests/test_gateway.py::test_the_allowed_routes_are_the_ones_flowers_fleet_client_calls"),
    Reliance("route", "/flwr.proto.Runtime/AcquireTask (SuperExec auth's protected method)",
             "launcher/shim/serverhost.py", "/flwr.proto.Runtime/AcquireTask",
             "tests/test_e2e.py::test_federated_run_completes_and_leaves_nothing_running"),
    Reliance("route", "/flwr.proto.Runtime/AcquireTask (pool endpoint)", "launcher/shim/endpoint.py",
             "/flwr.proto.Runtime/AcquireTask", "tests/test_pool.py"),
    # -- Flower's log wording matched --
    Reliance("wording", "'task-token authentication failed' (an expired task token)",
             "launcher/supervision/hints.py", "task-token authentication failed",
             "tests/test_remote_plans.py::test_explain_failure"),
    Reliance("wording", "TLS and connection errors in a client's log tail",
             "launcher/supervision/hints.py", "CERTIFICATE_VERIFY_FAILED",
             "tests/test_remote.py::test_serve_and_two_joins_over_tls_and_a_join_without_the_ca"),
    # -- sleeps shortened --
    Reliance("sleep", "time.sleep(3) idle poll and time.sleep(0.5) reply wait of the SuperNode",
             "launcher/shim/supernode.py", "IDLE_WAIT",
             "tests/test_flwr_internals.py::test_the_sleeps_the_prompt_supernode_shortens_are_still_there"),
    Reliance("sleep", "pull_objects' initial_backoff/backoff_cap", "fedcore/flwr_tuning.py",
             "FAST_PULL",
             "tests/test_flwr_internals.py::test_the_keyword_arguments_fedlaunch_passes_are_accepted"),
)
