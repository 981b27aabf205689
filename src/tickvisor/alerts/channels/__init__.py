"""Delivery channels: each makes one attempt and classifies its failure.

See :class:`Channel` for the contract; retries live in
:mod:`tickvisor.alerts.retry`, pacing and batching in the alert actor.
"""

from tickvisor.alerts.channels.base import Channel
from tickvisor.alerts.channels.email import EmailChannel
from tickvisor.alerts.channels.slack import SlackChannel
from tickvisor.alerts.channels.webhook import WebhookChannel

__all__ = ["Channel", "EmailChannel", "SlackChannel", "WebhookChannel"]
