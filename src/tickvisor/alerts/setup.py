"""Channels from the config: the one place that reads secrets out of ``SecretStr``."""

from __future__ import annotations

import ssl

from tickvisor.alerts.channels import EmailChannel, SlackChannel, WebhookChannel
from tickvisor.alerts.channels.base import Channel
from tickvisor.config import AlertsConfig


def channels_from_config(config: AlertsConfig) -> dict[str, Channel]:
    """One channel per configured endpoint, by name (``slack``, ``email``, ``webhook``)."""
    channels: dict[str, Channel] = {}
    if config.slack is not None:
        channels["slack"] = SlackChannel(
            config.slack.webhook_url.get_secret_value(),
            timeout=config.slack.timeout_seconds,
            min_interval_seconds=config.slack.min_interval_seconds,
        )
    if config.email is not None:
        email = config.email
        context = None
        if email.ca_file is not None:
            context = ssl.create_default_context(cafile=str(email.ca_file))
        channels["email"] = EmailChannel(
            email.host,
            email.effective_port,
            sender=email.sender,
            recipients=email.to,
            security=email.security,
            user=email.user,
            password=email.password.get_secret_value() if email.password else None,
            timeout=email.timeout_seconds,
            ssl_context=context,
        )
    if config.webhook is not None:
        channels["webhook"] = WebhookChannel(
            config.webhook.url.get_secret_value(),
            config.webhook.secret.get_secret_value(),
            timeout=config.webhook.timeout_seconds,
        )
    return channels
