"""The pika internals the AMQP fast path's pipelined declares rely on (`AmqpPeeker._pipeline`
in sources/rabbitmq/amqp.py). pika is pinned below 2; a release that moves one of them
fails here, before any broker is asked. tests/integration/test_rabbitmq_source.py runs the
pipeline itself against the real broker."""

from __future__ import annotations

import inspect

import pika.callback
import pika.channel
import pika.connection
import pika.frame
import pika.spec
import pytest
from pika.adapters.blocking_connection import BlockingConnection

pytestmark = pytest.mark.unit


def test_the_blocking_connection_drives_an_asynchronous_one_named_impl() -> None:
    assert "self._impl = self._create_connection(" in inspect.getsource(BlockingConnection)
    assert "self.callbacks = pika.callback.CallbackManager()" in inspect.getsource(
        pika.connection.Connection
    )
    assert list(inspect.signature(
        pika.connection.Connection._output_marshaled_frames
    ).parameters) == ["self", "marshaled_frames"]


def test_a_channel_hears_of_its_close_through_the_registry_the_pipeline_listens_to() -> None:
    """The channel's own Close handler and the pipeline's both run: the registry calls every
    callback of a frame's method, so listening does not take the frame from the channel."""
    assert "spec.Channel.Close" in inspect.getsource(pika.channel.Channel._add_callbacks)
    registry = pika.callback.CallbackManager()
    heard: list[str] = []
    registry.add(1, pika.spec.Channel.Close, lambda frame: heard.append("channel"), True)
    registry.add(1, pika.spec.Channel.Close, lambda frame: heard.append("pipeline"),
                 one_shot=False)
    close = pika.frame.Method(1, pika.spec.Channel.Close(404, "NOT_FOUND - no queue"))
    assert registry.process(1, close.method, object(), close)
    assert heard == ["channel", "pipeline"]


def test_passive_declares_marshal_back_to_back_and_decode_one_by_one() -> None:
    names = ["a", "b:c", "é" * 3]
    data = b"".join(
        pika.frame.Method(7, pika.spec.Queue.Declare(queue=name, passive=True)).marshal()
        for name in names
    )
    decoded = []
    while data:
        used, frame = pika.frame.decode_frame(data)
        assert isinstance(frame, pika.frame.Method)
        decoded.append((frame.channel_number, frame.method.queue, frame.method.passive))
        data = data[used:]
    assert decoded == [(7, name, True) for name in names]
