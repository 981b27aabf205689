"""Standard Webhooks signatures (https://www.standardwebhooks.com/), both ends.

The sender signs ``f"{webhook-id}.{webhook-timestamp}.{body}"`` with
HMAC-SHA256 and sends ``webhook-signature: v1,<base64>``. The receiver checks
the signature *and* that the timestamp is recent, which together stop forged
and replayed calls; the id lets it drop the duplicates that at-least-once
delivery produces.

Secrets: ``whsec_<base64>`` (the standard form) is base64-decoded to get the
key. A secret without that prefix is taken as text and its UTF-8 bytes are
the key. (The reference libraries base64-decode an unprefixed secret too;
we do not, so that an operator's plain passphrase works as written. Use the
``whsec_`` form to interoperate with other Standard Webhooks senders.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

#: Prefix of a Standard Webhooks secret whose remainder is base64.
SECRET_PREFIX = "whsec_"
#: The only signature scheme of the standard so far.
SCHEME = "v1"
#: Default tolerance between the signer's and the verifier's clocks, in seconds.
DEFAULT_TOLERANCE = 300.0


class InvalidSignature(ValueError):
    """A webhook call that must be rejected: bad or missing signature, or a stale timestamp."""


def secret_bytes(secret: str) -> bytes:
    """The HMAC key for ``secret`` (see the module docstring for the two accepted forms)."""
    if not secret:
        raise ValueError("webhook secret is empty")
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            # Never echo the secret, not even a part of it.
            raise ValueError(
                f"webhook secret starts with {SECRET_PREFIX!r} but the rest is not valid base64"
            ) from None
        if not key:
            raise ValueError("webhook secret is empty after its whsec_ prefix")
        return key
    return secret.encode("utf-8")


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one call: ``v1,<base64>``."""
    return f"{SCHEME},{_digest(secret_bytes(secret), msg_id, timestamp, body)}"


def verify(
    secret: str,
    msg_id: str | None,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Return if the call is authentic and recent, else raise :class:`InvalidSignature`.

    ``signature_header`` may hold several space-separated ``v1,<sig>`` entries
    (a sender rotating its secret signs with both); one match is enough.
    Entries of other schemes are ignored. Comparison is constant-time.
    """
    if not msg_id:
        raise InvalidSignature("missing webhook-id header")
    if not timestamp_header:
        raise InvalidSignature("missing webhook-timestamp header")
    if not signature_header:
        raise InvalidSignature("missing webhook-signature header")
    try:
        timestamp = int(timestamp_header.strip())
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not an integer") from None
    if timestamp < now - tolerance:
        raise InvalidSignature(
            f"webhook-timestamp is {now - timestamp:.0f} s old (tolerance {tolerance:g} s)"
        )
    if timestamp > now + tolerance:
        raise InvalidSignature(
            f"webhook-timestamp is {timestamp - now:.0f} s in the future "
            f"(tolerance {tolerance:g} s)"
        )
    expected = _digest(secret_bytes(secret), msg_id, timestamp, body).encode("ascii")
    matched = False
    for entry in signature_header.split():
        scheme, _, value = entry.partition(",")
        if scheme != SCHEME or not value:
            continue
        # Check every entry, so the time taken does not say which one matched.
        matched |= hmac.compare_digest(expected, value.encode("ascii", "replace"))
    if not matched:
        raise InvalidSignature("no v1 signature matches")
