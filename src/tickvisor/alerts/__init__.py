"""Alerting: events become alerts, grouped, kept in an outbox, delivered by channel actors.

The public face: :class:`AlertActor` (the router), :class:`ChannelActor`,
the channels, :class:`Notification` and its delivery errors, and the seed's
helpers for use outside the tree (``send_slack_alert`` and friends).
"""

from tickvisor.alerts.actor import AlertActor
from tickvisor.alerts.channel_actor import ChannelActor
from tickvisor.alerts.channels import Channel, EmailChannel, SlackChannel, WebhookChannel
from tickvisor.alerts.grouping import Grouper, GroupingPolicy
from tickvisor.alerts.helpers import (
    create_email_notifier,
    create_slack_notifier,
    send_email_alert,
    send_slack_alert,
    send_webhook_alert,
)
from tickvisor.alerts.notification import (
    AlertLine,
    DeliveryError,
    EndpointGoneError,
    Notification,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from tickvisor.alerts.retry import RetryPolicy

__all__ = [
    "AlertActor",
    "AlertLine",
    "Channel",
    "ChannelActor",
    "DeliveryError",
    "EmailChannel",
    "EndpointGoneError",
    "Grouper",
    "GroupingPolicy",
    "Notification",
    "PermanentDeliveryError",
    "RetryPolicy",
    "SlackChannel",
    "TransientDeliveryError",
    "WebhookChannel",
    "create_email_notifier",
    "create_slack_notifier",
    "send_email_alert",
    "send_slack_alert",
    "send_webhook_alert",
]
