"""Slack, e-mail and webhook channels against real loopback receivers.

Every test talks to a real server on 127.0.0.1 (tickvisor.testing): no mock
of requests or smtplib. Timeouts are short (0.3 s) and a stalled server is
released when its receiver closes, so the file stays fast.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
import traceback
import uuid
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickvisor.alerts.channels import Channel, EmailChannel, SlackChannel, WebhookChannel
from tickvisor.alerts.channels.base import clip, host_of, parse_retry_after
from tickvisor.alerts.channels.slack import (
    MAX_ATTACHMENT_TEXT,
    MAX_ATTACHMENTS,
    MAX_MESSAGE_CHARS,
    message_chars,
)
from tickvisor.alerts.notification import (
    AlertLine,
    DeliveryError,
    EndpointGoneError,
    Notification,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from tickvisor.alerts.signing import InvalidSignature, secret_bytes, sign, verify
from tickvisor.testing import FakeSlack, Reply, SmtpReceiver, Stall, WebhookReceiver

FAST = 0.3  # channel timeout, seconds
AT = 1_714_564_800.25  # 2024-05-01T12:00:00.250Z
WEBHOOK_SECRET = "whsec_" + "dGlja3Zpc29yLXRlc3Qtc2VjcmV0LWtleQ=="
SMTP_USER = "alerts@example.test"
SMTP_PASSWORD = "pa55-Do-Not-Leak-7f3a"


def make(**overrides: Any) -> Notification:
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "group_key": "breaker:candles",
        "service": "candles",
        "severity": "critical",
        "kind": "breaker.transition",
        "title": "candles breaker opened",
        "text": "5 consecutive failures",
        "at": AT,
        "from_state": "closed",
        "to_state": "open",
        "failure_count": 5,
        "time_until_half_open": 42.0,
        "alerts": (
            AlertLine(
                id="a1",
                kind="breaker.transition",
                severity="critical",
                at=AT - 1,
                text="candles: closed → open",
                from_state="closed",
                to_state="open",
                failure_count=5,
            ),
        ),
    }
    values.update(overrides)
    return Notification(**values)


def free_port() -> int:
    """A port nobody listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def all_text(exc: BaseException) -> str:
    """Everything an operator could see of an error: message, chain, formatted traceback."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


# --------------------------------------------------------------------------- Slack


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


@pytest.fixture
def slack_channel(slack: FakeSlack) -> Iterator[SlackChannel]:
    channel = SlackChannel(slack.url, timeout=FAST)
    yield channel
    channel.close()


def test_slack_channel_meets_the_protocol(slack_channel: SlackChannel) -> None:
    assert isinstance(slack_channel, Channel)
    assert (slack_channel.name, slack_channel.min_interval_seconds) == ("slack", 1.0)
    assert slack_channel.max_batch >= 10


def test_slack_ok_is_delivered(slack: FakeSlack, slack_channel: SlackChannel) -> None:
    slack_channel.send([make()])
    assert len(slack.delivered) == 1
    assert slack.delivered[0].headers["content-type"].startswith("application/json")


def test_slack_message_shape(slack: FakeSlack, slack_channel: SlackChannel) -> None:
    notification = make()
    slack_channel.send([notification])
    message = slack.delivered[0].body_json
    assert ":rotating_light:" in message["text"]
    assert "candles breaker opened" in message["text"]
    (attachment,) = message["attachments"]
    assert attachment["color"] == "#d00000"
    assert attachment["title"].startswith(":rotating_light: ")
    fields = {f["title"]: f["value"] for f in attachment["fields"]}
    assert fields["Service"] == "candles"
    assert fields["Transition"] == "closed → open"
    assert fields["Failures"] == "5"
    assert fields["Time until half-open"] == "42 s"
    assert attachment["footer"] == f"tickvisor alert {notification.id}"
    assert attachment["ts"] == int(AT)
    assert "candles breaker opened" in attachment["fallback"]
    assert "5 consecutive failures" in attachment["text"]
    assert "candles: closed → open" in attachment["text"]


@pytest.mark.parametrize(
    ("overrides", "color", "emoji"),
    [
        ({"severity": "warning"}, "#daa038", ":warning:"),
        ({"severity": "info"}, "#2eb886", ":information_source:"),
        ({"resolved": True, "to_state": "closed"}, "#2eb886", ":white_check_mark:"),
    ],
)
def test_slack_color_and_emoji_by_severity(
    slack: FakeSlack, slack_channel: SlackChannel, overrides: dict[str, Any], color: str, emoji: str
) -> None:
    slack_channel.send([make(**overrides)])
    (attachment,) = slack.delivered[0].body_json["attachments"]
    assert attachment["color"] == color
    assert attachment["title"].startswith(emoji)


def test_slack_resolved_has_no_half_open_countdown(
    slack: FakeSlack, slack_channel: SlackChannel
) -> None:
    slack_channel.send([make(resolved=True, from_state="half_open", to_state="closed")])
    (attachment,) = slack.delivered[0].body_json["attachments"]
    titles = [f["title"] for f in attachment["fields"]]
    assert "Time until half-open" not in titles
    assert "[RESOLVED]" in attachment["fallback"]


def test_slack_escapes_control_sequences(slack: FakeSlack, slack_channel: SlackChannel) -> None:
    slack_channel.send([make(title="<!channel> & co", text="see <http://x|here>")])
    (attachment,) = slack.delivered[0].body_json["attachments"]
    assert "&lt;!channel&gt; &amp; co" in attachment["title"]
    assert "<" not in attachment["text"]


def test_slack_batch_is_one_message_with_one_attachment_each(
    slack: FakeSlack, slack_channel: SlackChannel
) -> None:
    batch = [make(title=f"alert {i}", severity="warning") for i in range(3)]
    slack_channel.send(batch)
    assert len(slack.delivered) == 1
    message = slack.delivered[0].body_json
    assert message["text"].startswith("3 alerts: alert 0; alert 1; alert 2")
    footers = [a["footer"] for a in message["attachments"]]
    assert footers == [f"tickvisor alert {n.id}" for n in batch]


def test_slack_oversize_text_is_truncated(slack: FakeSlack, slack_channel: SlackChannel) -> None:
    slack_channel.send([make(text="x" * 100_000)])
    (attachment,) = slack.delivered[0].body_json["attachments"]
    assert len(attachment["text"]) <= MAX_ATTACHMENT_TEXT
    assert attachment["text"].endswith("… (truncated)")


def test_slack_huge_batch_stays_within_limits(
    slack: FakeSlack, slack_channel: SlackChannel
) -> None:
    lines = tuple(
        AlertLine(id=str(i), kind="k", severity="warning", at=AT, text="y" * 500) for i in range(50)
    )
    batch = [make(title="t" * 1_000, text="x" * 10_000, alerts=lines) for _ in range(150)]
    slack_channel.send(batch)
    message = slack.delivered[0].body_json
    assert len(message["attachments"]) == MAX_ATTACHMENTS
    assert message["attachments"][-1]["text"].startswith("… (truncated)")
    assert "51 more" in message["attachments"][-1]["text"]
    assert message_chars(message) <= MAX_MESSAGE_CHARS
    assert len(message["text"]) <= MAX_MESSAGE_CHARS


def test_slack_429_is_transient_with_retry_after(
    slack: FakeSlack, slack_channel: SlackChannel
) -> None:
    slack.script(Reply(429, "rate_limited", {"Retry-After": "7"}))
    with pytest.raises(TransientDeliveryError) as caught:
        slack_channel.send([make()])
    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 502, 503])
def test_slack_5xx_is_transient(slack: FakeSlack, slack_channel: SlackChannel, status: int) -> None:
    slack.script(Reply(status, "oops"))
    with pytest.raises(TransientDeliveryError) as caught:
        slack_channel.send([make()])
    assert caught.value.retry_after is None
    assert str(status) in str(caught.value)


def test_slack_timeout_is_transient(slack: FakeSlack, slack_channel: SlackChannel) -> None:
    slack.script(Stall(30))  # released when the receiver closes
    with pytest.raises(TransientDeliveryError, match=r"no answer within 0\.3 s"):
        slack_channel.send([make()])


def test_slack_connection_refused_is_transient() -> None:
    channel = SlackChannel(f"http://127.0.0.1:{free_port()}/services/T/B/secret", timeout=FAST)
    with pytest.raises(TransientDeliveryError, match="cannot connect"):
        channel.send([make()])


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(400, "invalid_payload"), "invalid_payload"),
        (Reply(403, "action_prohibited"), "action_prohibited"),
        (Reply(404, "channel_not_found"), "channel_not_found"),
        (Reply(404, "no_service"), "no_service"),
        (Reply(410, "channel_is_archived"), "channel_is_archived"),
        (Reply(200, "no_text"), "no_text"),
    ],
)
def test_slack_client_errors_are_permanent_and_name_the_reason(
    slack: FakeSlack, slack_channel: SlackChannel, reply: Reply, reason: str
) -> None:
    slack.script(reply)
    with pytest.raises(PermanentDeliveryError) as caught:
        slack_channel.send([make()])
    assert reason in str(caught.value)
    assert not isinstance(caught.value, TransientDeliveryError)


def test_slack_410_disables_the_endpoint(slack: FakeSlack, slack_channel: SlackChannel) -> None:
    slack.script(Reply(410, "channel_is_archived"))
    with pytest.raises(EndpointGoneError):
        slack_channel.send([make()])


def test_slack_real_payload_errors_come_back_permanent(slack: FakeSlack) -> None:
    wrong_path = slack.url.rsplit("/", 1)[0] + "/revoked"
    channel = SlackChannel(wrong_path, timeout=FAST)
    with pytest.raises(PermanentDeliveryError, match="no_service"):
        channel.send([make()])


@pytest.mark.parametrize(
    "behaviour",
    [Reply(500, "x"), Reply(429, "x"), Reply(404, "channel_not_found"), Stall(30), "refused"],
)
def test_slack_webhook_path_never_appears(slack: FakeSlack, behaviour: Any) -> None:
    url = slack.url if behaviour != "refused" else f"http://127.0.0.1:{free_port()}/services/T/B/k"
    path = url.split("/", 3)[3]
    channel = SlackChannel(url, timeout=FAST)
    if behaviour != "refused":
        slack.script(behaviour)
    with pytest.raises(DeliveryError) as caught:
        channel.send([make()])
    assert path not in all_text(caught.value)
    assert caught.value.__context__ is None
    assert path not in channel.describe()
    assert path not in repr(channel)
    assert channel.describe() == f"slack {host_of(url)}"


def test_slack_rejects_a_bad_url_without_echoing_it() -> None:
    with pytest.raises(ValueError) as caught:
        SlackChannel("hooks.slack.com/services/T/B/SECRETPART")
    assert "SECRETPART" not in str(caught.value)


def test_host_of_keeps_only_host_and_port() -> None:
    assert host_of("https://hooks.slack.com/services/T/B/X") == "hooks.slack.com"
    assert host_of("https://user:pw@example.com:8443/x?token=1") == "example.com:8443"
    assert host_of("not a url") == "<invalid url>"


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("12", now=0) == 12.0
    assert parse_retry_after("-3", now=0) == 0.0
    assert parse_retry_after(None, now=0) is None
    assert parse_retry_after("soon", now=0) is None
    date = "Wed, 01 May 2024 12:00:30 GMT"
    assert parse_retry_after(date, now=parsedate_to_datetime(date).timestamp() - 30) == 30.0


def test_clip_marks_what_it_cut() -> None:
    assert clip("short", 10) == "short"
    assert clip("x" * 50, 20) == "x" * 7 + "… (truncated)"
    assert clip("abc", 0) == ""


# --------------------------------------------------------------------------- webhook


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(WEBHOOK_SECRET) as server:
        yield server


@pytest.fixture
def webhook(receiver: WebhookReceiver) -> Iterator[WebhookChannel]:
    channel = WebhookChannel(receiver.url, WEBHOOK_SECRET, timeout=FAST)
    yield channel
    channel.close()


def test_webhook_delivers_a_verified_call(
    receiver: WebhookReceiver, webhook: WebhookChannel
) -> None:
    assert isinstance(webhook, Channel)
    notification = make()
    webhook.send([notification])
    assert receiver.ids() == [notification.id]
    (call,) = receiver.requests
    assert call.headers["content-type"] == "application/json"
    assert call.headers["webhook-signature"].startswith("v1,")
    assert abs(int(call.headers["webhook-timestamp"]) - time.time()) < 60


def test_webhook_body_fields(receiver: WebhookReceiver, webhook: WebhookChannel) -> None:
    notification = make()
    webhook.send([notification])
    body = receiver.accepted[0].json()
    assert body["id"] == notification.id
    assert body["type"] == "breaker.transition"
    assert body["severity"] == "critical"
    assert body["service"] == "candles"
    assert (body["from_state"], body["to_state"], body["failure_count"]) == ("closed", "open", 5)
    assert body["at"] == "2024-05-01T12:00:00.250Z"
    assert body["text"] == "5 consecutive failures"
    assert body["resolved"] is False
    assert body["alerts"][0]["text"] == "candles: closed → open"
    assert body["alerts"][0]["id"] == "a1"


def test_webhook_stale_timestamp_is_rejected(receiver: WebhookReceiver) -> None:
    ten_minutes_ago = WebhookChannel(
        receiver.url, WEBHOOK_SECRET, timeout=FAST, time=lambda: time.time() - 600
    )
    with pytest.raises(PermanentDeliveryError, match="400"):
        ten_minutes_ago.send([make()])
    assert receiver.accepted == []
    assert "old" in receiver.rejected[0].reason


def test_webhook_wrong_secret_is_rejected(receiver: WebhookReceiver) -> None:
    other = WebhookChannel(receiver.url, "whsec_" + "b3RoZXIta2V5", timeout=FAST)
    with pytest.raises(PermanentDeliveryError):
        other.send([make()])
    assert receiver.rejected[0].reason == "no v1 signature matches"


def test_webhook_raw_secret_is_used_as_utf8() -> None:
    with WebhookReceiver("plain passphrase") as receiver:
        WebhookChannel(receiver.url, "plain passphrase", timeout=FAST).send([make()])
        assert len(receiver.accepted) == 1
    assert secret_bytes("plain passphrase") == b"plain passphrase"


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_webhook_2xx_is_delivered(
    receiver: WebhookReceiver, webhook: WebhookChannel, status: int
) -> None:
    receiver.script(Reply(status))
    webhook.send([make()])
    assert receiver.requests[0].status_answered == status


def test_webhook_410_is_endpoint_gone(receiver: WebhookReceiver, webhook: WebhookChannel) -> None:
    receiver.script(Reply(410, "gone"))
    with pytest.raises(EndpointGoneError, match="410"):
        webhook.send([make()])


def test_webhook_429_is_transient_with_retry_after(
    receiver: WebhookReceiver, webhook: WebhookChannel
) -> None:
    receiver.script(Reply(429, "slow down", {"Retry-After": "3"}))
    with pytest.raises(TransientDeliveryError) as caught:
        webhook.send([make()])
    assert caught.value.retry_after == 3.0


@pytest.mark.parametrize("status", [500, 503, 408])
def test_webhook_5xx_is_transient(
    receiver: WebhookReceiver, webhook: WebhookChannel, status: int
) -> None:
    receiver.script(Reply(status))
    with pytest.raises(TransientDeliveryError):
        webhook.send([make()])


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_webhook_other_4xx_is_permanent(
    receiver: WebhookReceiver, webhook: WebhookChannel, status: int
) -> None:
    receiver.script(Reply(status))
    with pytest.raises(PermanentDeliveryError) as caught:
        webhook.send([make()])
    assert not isinstance(caught.value, EndpointGoneError)


def test_webhook_timeout_and_refused_are_transient(
    receiver: WebhookReceiver, webhook: WebhookChannel
) -> None:
    receiver.script(Stall(30))
    with pytest.raises(TransientDeliveryError, match="no answer"):
        webhook.send([make()])
    refused = WebhookChannel(f"http://127.0.0.1:{free_port()}/h", WEBHOOK_SECRET, timeout=FAST)
    with pytest.raises(TransientDeliveryError, match="cannot connect"):
        refused.send([make()])


def test_webhook_secret_never_appears(receiver: WebhookReceiver) -> None:
    url = receiver.url + "?token=query-secret"
    channel = WebhookChannel(url, WEBHOOK_SECRET, timeout=FAST)
    receiver.script(Reply(500, f"echoing {WEBHOOK_SECRET}"))
    with pytest.raises(DeliveryError) as caught:
        channel.send([make()])
    for secret in (WEBHOOK_SECRET, "query-secret", "/hooks/tickvisor"):
        assert secret not in all_text(caught.value)
        assert secret not in channel.describe()
    with pytest.raises(ValueError) as bad:
        WebhookChannel(url, "whsec_not*base64")
    assert "not*base64" not in str(bad.value)


# --------------------------------------------------------------------------- signing


@given(
    secret=st.binary(min_size=1, max_size=64),
    msg_id=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40
    ),
    timestamp=st.integers(min_value=0, max_value=2**40),
    body=st.binary(max_size=512),
    position=st.integers(min_value=0),
    delta=st.integers(min_value=1, max_value=255),
)
def test_sign_verify_property(
    secret: bytes, msg_id: str, timestamp: int, body: bytes, position: int, delta: int
) -> None:
    import base64

    whsec = "whsec_" + base64.b64encode(secret).decode()
    signature = sign(whsec, msg_id, timestamp, body)
    verify(whsec, msg_id, str(timestamp), signature, body, now=timestamp)

    if body:
        i = position % len(body)
        changed = body[:i] + bytes([(body[i] + delta) % 256]) + body[i + 1 :]
        with pytest.raises(InvalidSignature):
            verify(whsec, msg_id, str(timestamp), signature, changed, now=timestamp)
    j = position % len(msg_id)
    other_char = chr(33 + (ord(msg_id[j]) - 33 + delta % 93 + 1) % 94)
    other_id = msg_id[:j] + other_char + msg_id[j + 1 :]
    if other_id != msg_id:
        with pytest.raises(InvalidSignature):
            verify(whsec, other_id, str(timestamp), signature, body, now=timestamp)
    other_ts = timestamp + delta
    with pytest.raises(InvalidSignature):
        verify(whsec, msg_id, str(other_ts), signature, body, now=other_ts)


def test_verify_accepts_any_of_several_signatures() -> None:
    good = sign(WEBHOOK_SECRET, "m1", 100, b"{}")
    old = sign("whsec_" + "b2xkLWtleQ==", "m1", 100, b"{}")
    verify(WEBHOOK_SECRET, "m1", "100", f"{old} v2,zzz {good}", b"{}", now=100)


@pytest.mark.parametrize(
    ("msg_id", "ts", "sig", "now", "reason"),
    [
        ("m1", "100", None, 100, "missing webhook-signature"),
        ("m1", None, "v1,x", 100, "missing webhook-timestamp"),
        (None, "100", "v1,x", 100, "missing webhook-id"),
        ("m1", "abc", "v1,x", 100, "not an integer"),
        ("m1", "100", "v1,x", 401, "old"),
        ("m1", "100", "v1,x", -201, "future"),
        ("m1", "100", "v1,x", 100, "no v1 signature"),
    ],
)
def test_verify_rejections(
    msg_id: str | None, ts: str | None, sig: str | None, now: float, reason: str
) -> None:
    with pytest.raises(InvalidSignature, match=reason):
        verify(WEBHOOK_SECRET, msg_id, ts, sig, b"{}", now=now)


# --------------------------------------------------------------------------- e-mail


def email_channel(receiver: SmtpReceiver, **overrides: Any) -> EmailChannel:
    settings: dict[str, Any] = {
        "sender": "tickvisor@example.test",
        "recipients": ["ops@example.test", "oncall@example.test"],
        "security": "none" if receiver.mode == "plain" else receiver.mode,
        "timeout": 2.0,
    }
    if receiver.ca is not None:
        settings["ssl_context"] = receiver.client_ssl_context()
    if receiver.auth is not None:
        settings["user"], settings["password"] = receiver.auth
    settings.update(overrides)
    return EmailChannel(receiver.host, receiver.port, **settings)


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    with SmtpReceiver("plain") as server:
        yield server


def test_email_plain_relay_delivers_the_message(smtp: SmtpReceiver) -> None:
    channel = email_channel(smtp)
    assert isinstance(channel, Channel)
    notification = make()
    channel.send([notification])
    (message,) = smtp.messages
    assert message["Subject"] == "[CRITICAL] candles breaker opened"
    assert message["Message-ID"] == f"<{notification.id}@tickvisor>"
    assert message["X-Tickvisor-Alert-Id"] == notification.id
    assert parsedate_to_datetime(message["Date"]).timestamp() == int(AT)
    assert message["To"] == "ops@example.test, oncall@example.test"
    body = message.get_content()
    assert "5 consecutive failures" in body
    assert "candles: closed → open" in body
    assert "Transition: closed -> open" in body
    assert smtp.envelopes[0].rcpt_tos == ("ops@example.test", "oncall@example.test")


def test_email_subject_cannot_inject_headers(smtp: SmtpReceiver) -> None:
    email_channel(smtp).send([make(title="x\r\nBcc: evil@example.test", resolved=True)])
    (message,) = smtp.messages
    assert message["Bcc"] is None
    assert message["Subject"] == "[RESOLVED] x Bcc: evil@example.test"


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_email_tls_with_auth(mode: str) -> None:
    with SmtpReceiver(mode, auth=(SMTP_USER, SMTP_PASSWORD)) as server:  # type: ignore[arg-type]
        email_channel(server).send([make()])
        assert server.envelopes[0].login == SMTP_USER
        assert len(server.messages) == 1


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_email_default_context_refuses_an_untrusted_certificate(mode: str) -> None:
    with SmtpReceiver(mode) as server:  # type: ignore[arg-type]
        channel = email_channel(server, ssl_context=None)  # ssl.create_default_context()
        with pytest.raises(PermanentDeliveryError, match="TLS certificate verification failed"):
            channel.send([make()])
        assert server.messages == []


def test_email_wrong_password_is_permanent_and_not_shown() -> None:
    with SmtpReceiver("starttls", auth=(SMTP_USER, "the-right-one")) as server:
        channel = email_channel(server, user=SMTP_USER, password=SMTP_PASSWORD)
        with pytest.raises(PermanentDeliveryError, match="535") as caught:
            channel.send([make()])
        assert SMTP_PASSWORD not in all_text(caught.value)
        assert SMTP_PASSWORD not in repr(channel)
        assert set(server.auth_attempts) == {SMTP_USER}  # smtplib tries PLAIN, then LOGIN


def test_email_login_where_the_relay_offers_no_auth_is_permanent() -> None:
    with SmtpReceiver("plain", auth=(SMTP_USER, SMTP_PASSWORD)) as server:
        # security="none" with a user: the relay (rightly) offers AUTH only over TLS.
        with pytest.raises(PermanentDeliveryError, match="does not support"):
            email_channel(server).send([make()])
        assert server.auth_attempts == []


def test_email_starttls_against_a_relay_without_it_is_permanent(smtp: SmtpReceiver) -> None:
    channel = email_channel(smtp, security="starttls", ssl_context=ssl.create_default_context())
    with pytest.raises(PermanentDeliveryError, match="STARTTLS"):
        channel.send([make()])


@pytest.mark.parametrize(
    ("code", "stage", "expected"),
    [
        (451, "DATA", TransientDeliveryError),
        (452, "RCPT", TransientDeliveryError),
        (550, "DATA", PermanentDeliveryError),
        (550, "RCPT", PermanentDeliveryError),
        (554, "DATA", PermanentDeliveryError),
    ],
)
def test_email_reply_codes_classify(
    smtp: SmtpReceiver, code: int, stage: Any, expected: type[DeliveryError]
) -> None:
    smtp.fail_next(code, at=stage)
    if stage == "RCPT":
        smtp.fail_next(code, at=stage)  # both recipients
    with pytest.raises(expected, match=str(code)) as caught:
        email_channel(smtp).send([make()])
    if expected is PermanentDeliveryError:
        assert not isinstance(caught.value, TransientDeliveryError)


def test_email_server_disconnect_is_transient(smtp: SmtpReceiver) -> None:
    smtp.disconnect_next()
    with pytest.raises(TransientDeliveryError, match="closed the connection"):
        email_channel(smtp).send([make()])
    email_channel(smtp).send([make()])  # and the next try goes through
    assert len(smtp.messages) == 1


def test_email_refused_connection_is_transient() -> None:
    channel = EmailChannel(
        "127.0.0.1", free_port(), sender="a@x.test", recipients=["b@x.test"], security="none"
    )
    with pytest.raises(TransientDeliveryError, match="refused"):
        channel.send([make()])


def test_email_silent_server_times_out_as_transient() -> None:
    with socket.socket() as listener:  # accepts TCP, never says hello
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        channel = EmailChannel(
            "127.0.0.1",
            port,
            sender="a@x.test",
            recipients=["b@x.test"],
            security="none",
            timeout=FAST,
        )
        with pytest.raises(TransientDeliveryError, match=r"no answer within 0\.3 s"):
            channel.send([make()])


def test_email_smtps_against_a_plain_server_is_permanent(smtp: SmtpReceiver) -> None:
    channel = email_channel(smtp, security="ssl", ssl_context=ssl.create_default_context())
    with pytest.raises(PermanentDeliveryError, match="TLS failed"):
        channel.send([make()])


def test_email_settings_are_checked_up_front() -> None:
    with pytest.raises(ValueError, match="security"):
        EmailChannel("h", 25, sender="a@x", recipients=["b@x"], security="tls")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="recipient"):
        EmailChannel("h", 25, sender="a@x", recipients=[])
    with pytest.raises(ValueError, match="password"):
        EmailChannel("h", 25, sender="a@x", recipients=["b@x"], user="u")


def test_smtplib_errors_are_oserrors() -> None:
    # EmailChannel.send relies on this to catch every smtplib error in one clause.
    assert issubclass(smtplib.SMTPException, OSError)
