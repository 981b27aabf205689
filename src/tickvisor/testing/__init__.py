"""Test support that ships with the package: real loopback receivers for channels.

Used by the test suite and the benchmarks, and by anyone testing their own
alert routing against tickvisor without a real Slack, SMTP relay or webhook.
"""

from tickvisor.testing.receivers import (
    Accepted,
    Envelope,
    FakeSlack,
    Received,
    Rejected,
    Reply,
    SmtpReceiver,
    Stall,
    WebhookReceiver,
    client_context,
    server_context,
    test_ca,
)

__all__ = [
    "Accepted",
    "Envelope",
    "FakeSlack",
    "Received",
    "Rejected",
    "Reply",
    "SmtpReceiver",
    "Stall",
    "WebhookReceiver",
    "client_context",
    "server_context",
    "test_ca",
]
