"""Warnings about one episode's features, kept structured on their way to the answer.

A `FeatureWarning` is a string ("episode E-1: ecog='x' is not a number; encoded as missing"), so
logs, `X.attrs["warnings"]` and callers that join warnings keep working, and it also carries the
episode id and the text, so the scorer attaches it to its episode without parsing the string.
"""

from __future__ import annotations


class FeatureWarning(str):
    """`str(w)` is `episode {episode_id}: {text}`; `w.episode_id` and `w.text` are the parts."""

    episode_id: str
    text: str

    def __new__(cls, episode_id: object, text: str) -> FeatureWarning:
        warning = super().__new__(cls, f"episode {episode_id}: {text}")
        warning.episode_id = str(episode_id)
        warning.text = text
        return warning

    def __reduce__(self) -> tuple[type[FeatureWarning], tuple[str, str]]:
        return (FeatureWarning, (self.episode_id, self.text))
