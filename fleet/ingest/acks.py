"""The QoS 1 acknowledgements of a committed batch, handed to paho as one write.

``Client.ack`` queues one PUBACK per message and wakes the network thread for each (a byte on a
socket pair), which then sends each on its own: per message, a few microseconds in each thread, and
the two threads share one interpreter lock. A PUBACK is four fixed bytes (type, length 2, packet
id; an MQTT v5 PUBACK may omit its success reason code), so a batch's acknowledgements are one
buffer queued once. Paho keeps no state for a received QoS 1 message, so nothing else is skipped.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt

PUBACK_PACKET = struct.Struct("!BBH")


def ack_all(client: mqtt.Client, mids: Sequence[int]) -> None:
    """Acknowledge QoS 1 messages by packet id, in one write."""
    if not mids:
        return
    queue: Callable[..., Any] | None = getattr(client, "_packet_queue", None)
    if queue is None:  # a paho without the queue this relies on: one call per message
        for mid in mids:
            client.ack(mid, 1)
        return
    pack = PUBACK_PACKET.pack
    queue(mqtt.PUBACK, b"".join([pack(mqtt.PUBACK, 2, mid) for mid in mids]), 0, 0)
