"""How big are the HTTP requests a SuperNode sends through the gateway? Sizes the gateway's caps.

`python bench/fleet_message_sizes.py [MODEL ...]` builds each model's train reply as fedcore's
ClientApp does (one flat float32 Array, fedcore/weights.py, plus its metrics), splits it into
Flower objects as the SuperNode does, and prints the body of each request kind it would POST:
`push-messages` (the message and its object tree) and `push-object` (one object each; an Array
is cut into chunks of FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE, 5 MiB by default). It also prints the
largest header block Flower's Fleet client sends (the node-signature headers included).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

from fedcore.models import build_model
from fedcore.weights import to_record

MODELS = ("cnn", "mobilenetv2", "resnet18")


def sizes(model: str) -> tuple[int, int, int, int]:
    """(parameters, push-messages body, largest push-object body, objects) for one reply."""
    from flwr.app import Message, Metadata, MetricRecord, RecordDict
    from flwr.app.message.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.proto.fleet_pb2 import PushMessagesRequest
    from flwr.proto.message_pb2 import PushObjectRequest
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

    record = to_record(build_model(model))
    content = RecordDict({"arrays": record, "metrics": MetricRecord(
        {"num-examples": 50_000, "train-loss": 1.0, "train-accuracy": 1.0, "partition-id": 99,
         "seconds": 1.0})})
    big = 2**63 - 1  # the widest ids, so no varint is shorter than a real one
    message = Message(content=content, metadata=Metadata(
        run_id=big, message_id="", src_node_id=big, dst_node_id=1, reply_to_message_id="f" * 64,
        group_id="999999", created_at=1.8e9, ttl=43200.0, message_type="train"))
    objects = get_all_nested_objects(message)
    node = Node(node_id=big)
    push = PushMessagesRequest(
        node=node, messages_list=[message_to_proto(remove_content_from_message(message))],
        message_object_trees=[get_object_tree(message)], clientapp_runtime_list=[1.0])
    largest = max(len(PushObjectRequest(node=node, run_id=big, session_id="x" * 64,
                                        object_id=oid, object_content=obj.deflate())
                      .SerializeToString()) for oid, obj in objects.items())
    parameters = record["weights"].numpy().size
    return parameters, len(push.SerializeToString()), largest, len(objects)


def header_block() -> int:
    """Bytes of the request head (request line + headers) a signed Fleet call carries."""
    import httpx
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.primitives.asymmetric import generate_key_pairs
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    private, public = generate_key_pairs()
    request = httpx.Request("POST", "https://a-long-server-name.example.org:9092/v1/fleet/push-object",
                            content=b"x", headers={"content-type": "application/protobuf"})
    context = SimpleNamespace(request=request)
    for interceptor in (RuntimeVersionHttpInterceptor(component_name="SuperNode"),
                        NodeAuthHttpInterceptor(private, public)):
        interceptor.intercept(context, lambda c: httpx.Response(200))  # type: ignore[arg-type]
    head = f"POST {request.url.raw_path.decode()} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in request.headers.items()) + "\r\n"
    return len(head.encode())


def main(argv: list[str]) -> int:
    for model in argv or MODELS:
        parameters, push, largest, count = sizes(model)
        print(f"{model}: {parameters:,} parameters ({parameters * 4 / 2**20:.1f} MiB float32), "
              f"{count} objects; push-messages body {push:,} B; largest push-object body "
              f"{largest:,} B ({largest / 2**20:.2f} MiB)")
    print(f"request head of a signed Fleet call: {header_block():,} B")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
