"""Invitation files (`fedlm invite`): everything a member needs to join, checked as FedLM checks it.

The digest is the SHA-256 of every field but `digest`, each written as
`<field>\\t<length in UTF-8 bytes>\\t<value>\\n` in the order of FIELDS (absent values empty).
"""

from __future__ import annotations

import hashlib
import json
import time

FORMAT = "fedlm-invitation/1"
FIELDS = ["format", "federation", "member", "cluster", "tokens", "localSteps", "broker", "brokerPublicKey", "publicKey",
          "secretKey", "modelConfig", "tokenizer", "tokenizerSHA256", "issued", "expires"]


class InvitationError(Exception):
    """What is wrong with an invitation file: its code (unreadable, notAnInvitation, tampered,
    expired, mismatched) and a sentence."""

    def __init__(self, code: str, path: str, detail: str):
        super().__init__(f"invitation {path} ({code}): {detail}")
        self.code = code


def digest(invitation: dict) -> str:
    h = hashlib.sha256()
    for name in FIELDS:
        value = invitation.get(name)
        text = "" if value is None else str(value)
        h.update(f"{name}\t{len(text.encode('utf-8'))}\t{text}\n".encode("utf-8"))
    return h.hexdigest()


def read(path: str, now: float = None) -> dict:
    """The invitation at `path`, checked; raises InvitationError saying what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            invitation = json.load(f)
    except OSError as e:
        raise InvitationError("unreadable", path, f"cannot read it ({e.strerror})")
    except ValueError as e:
        raise InvitationError("notAnInvitation", path, f"not an invitation file ({e})")
    if not isinstance(invitation, dict) or invitation.get("format") != FORMAT:
        raise InvitationError("notAnInvitation", path, f"not a {FORMAT} file")
    missing = [name for name in FIELDS if name not in ("cluster", "tokens") and name not in invitation]
    if missing:
        raise InvitationError("notAnInvitation", path, "missing " + ", ".join(missing))
    if invitation.get("digest") != digest(invitation):
        raise InvitationError("tampered", path, "its contents do not match its digest: the file was edited or damaged; ask for a new one")
    if invitation["expires"] <= (time.time() if now is None else now):
        raise InvitationError("expired", path, "it has expired; ask the federation for a new one")
    import zmq
    try:
        public = zmq.curve_public(invitation["secretKey"].encode()).decode()
    except Exception:
        public = None
    if public != invitation["publicKey"] or len(invitation["brokerPublicKey"]) != 40:
        raise InvitationError("mismatched", path, "its key pair does not belong together, or the broker's key is not a CURVE key")
    if hashlib.sha256(invitation["tokenizer"].encode("utf-8")).hexdigest() != invitation["tokenizerSHA256"]:
        raise InvitationError("mismatched", path, "its tokenizer is not the one whose SHA-256 it names")
    return invitation
