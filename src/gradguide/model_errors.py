"""One-line messages from the exceptions that transformers and the hub client raise, for
the :class:`~gradguide.errors.GradguideError` s of model loading.
"""

from __future__ import annotations


def one_line(err: BaseException) -> str:
    """An exception's message squeezed onto one line."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def first_sentence(err: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message, kept short for a one-line error."""
    text = one_line(err)
    cut = text.find(". ")
    text = text[: cut + 1] if cut >= 0 else text
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
