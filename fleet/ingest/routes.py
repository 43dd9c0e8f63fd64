"""Topics the ingester's MQTT client also takes, handled outside the stored-message stream.

A route is subscribed without ``$share`` (every fleet worker sees its messages) and its messages
never reach the ingest queue or the dead letters; its handler runs on paho's network thread, so
it must not block (no database work there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions


@dataclass(frozen=True)
class Route:
    topic_filter: str
    handler: Callable[[str, bytes], None]


def attach(client: mqtt.Client, routes: list[Route], manual_ack: bool) -> None:
    for route in routes:

        def deliver(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage, route: Route = route) -> None:
            try:
                route.handler(message.topic, bytes(message.payload))
            finally:
                if manual_ack:  # nothing is stored for a route: acknowledged as it arrives
                    _c.ack(message.mid, message.qos)

        client.message_callback_add(route.topic_filter, deliver)


def subscribe(client: mqtt.Client, routes: list[Route]) -> None:
    if routes:
        client.subscribe([(route.topic_filter, SubscribeOptions(qos=1)) for route in routes])
