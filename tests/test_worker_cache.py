"""A pool worker keeps the last message's objects: its next task of the round pulls only the head."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.task_identity import TaskIdentity

from launcher.shim.worker import ObjectCache


def round_message(weights: np.ndarray, node: int, server_round: int) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, node, server_round
    content = RecordDict({"arrays": ArrayRecord({"weights": Array(weights)}),
                          "config": ConfigRecord({"server-round": server_round, "lr": 0.05})})
    return Message(content=content, dst_node_id=node, message_type="train")


class SuperNodeStore:
    """The objects a SuperNode holds for its message, and which of them a worker pulled."""

    def __init__(self, message: Message) -> None:
        self.tree = get_object_tree(message)
        self.contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(message).items()}
        self.pulled: list[str] = []

    def pull(self, object_id: str) -> bytes:
        self.pulled.append(object_id)
        return self.contents[object_id]


def take(cache: ObjectCache, store: SuperNodeStore) -> Message:
    pull = cache.around(pull_and_inflate_object_from_tree)
    message = pull(store.tree, store.pull, lambda _object_id: None, return_type=Message)
    assert isinstance(message, Message)
    return message


def test_a_rounds_second_task_pulls_only_its_head_and_gets_the_same_weights() -> None:
    weights = np.arange(5000, dtype=np.float32)
    first, second = SuperNodeStore(round_message(weights, 1, 3)), SuperNodeStore(round_message(weights, 2, 3))
    assert len(first.contents) >= 5  # message, record dict, array record, array (and its chunks), config
    cache = ObjectCache()

    got = take(cache, first)
    assert sorted(first.pulled) == sorted(first.contents) and cache.hits == 0

    got = take(cache, second)
    assert second.pulled == [second.tree.object_id]  # the head differs: its destination node
    assert cache.hits == len(second.contents) - 1
    np.testing.assert_array_equal(got.content.array_records["arrays"]["weights"].numpy(), weights)
    assert got.metadata.dst_node_id == 2


def test_the_next_rounds_model_is_pulled_whole_and_only_the_last_message_is_kept() -> None:
    cache = ObjectCache()
    take(cache, SuperNodeStore(round_message(np.zeros(3000, np.float32), 1, 1)))
    nxt = SuperNodeStore(round_message(np.ones(3000, np.float32), 1, 2))
    got = take(cache, nxt)
    assert sorted(nxt.pulled) == sorted(nxt.contents) and cache.hits == 0
    assert set(cache.contents) == set(nxt.contents)  # round 1's objects are gone
    np.testing.assert_array_equal(got.content.array_records["arrays"]["weights"].numpy(),
                                  np.ones(3000, np.float32))
