"""Token ids -> text pieces, for streaming: never splits a UTF-8 character, never sends a stop string."""
from __future__ import annotations


class Detokenizer:
    """Decodes the whole answer so far and hands out only the new characters; a
    trailing U+FFFD means a multi-byte character is still incomplete, so wait."""

    def __init__(self, tok) -> None:
        self.tok, self.ids, self.sent = tok, [], 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece, self.sent = text[self.sent:], len(text)
        return piece

    def text(self) -> str:
        return self.tok.decode(self.ids, skip_special_tokens=True)
