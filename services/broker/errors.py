"""Broker errors, and the outcomes a message handler raises instead of acking itself."""

from __future__ import annotations

from services.db.rows import Outgoing
from services.errors import ImagegenError


class BrokerError(ImagegenError):
    """RabbitMQ refused or failed an operation."""


class BrokerUnavailable(BrokerError):
    """RabbitMQ cannot be reached right now."""


class TopologyMissing(BrokerUnavailable):
    """RabbitMQ answers, but a queue of the namespace is not there: no process of it has
    started (each declares the topology), or someone deleted the queue."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what}: the service declares its queues when it starts; has it run with this"
            " IMAGEGEN_NAMESPACE?"
        )


class PublishReturned(BrokerError):
    """A mandatory message could not be routed to any queue."""


class MessageOutcome(Exception):
    """How a handler wants its message settled; the consumer wrapper does the settling."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Drop(MessageOutcome):
    """Nothing to do (a duplicate, a stale retry, an ended task): acknowledge and move on."""


class Reject(MessageOutcome):
    """The message is bad: park it in the dead queue with the reason, then acknowledge.

    ``event``, when set, is published after parking (e.g. ``task.rejected`` to the sender).
    """

    def __init__(self, reason: str, event: Outgoing | None = None) -> None:
        super().__init__(reason)
        self.event = event
