"""Whether a string can be a fal key at all, decided before anything is sent and without loading httpx.

The server checks the key when it starts (a warning) and the transport before every request (a
refusal): a placeholder copied from an example, or a key with a character no HTTP header can carry,
would otherwise reach fal only to earn a 401, or fail on the wire with a message that names neither.
"""

from __future__ import annotations


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a fal key, or None; the answer never quotes the key.

    A placeholder copied from an example configuration would only earn a 401 from fal, after a round
    trip and with a message that blames the key without saying it was never filled in.
    """
    if "<" in key or ">" in key or "your fal key" in key.lower() or "your-fal-key" in key.lower():
        return "is still the placeholder from the example configuration, not a real key"
    key_id, colon, secret = key.partition(":")
    if not colon or not key_id or not secret or any(char.isspace() for char in key):
        return "is not of the form key_id:key_secret"
    if not all(0x21 <= ord(char) <= 0x7E for char in key):
        return "holds characters an HTTP header cannot carry (a copy-paste artefact?)"
    return None
