"""Run profiles: one switch that sizes every notebook.

``COURSE_PROFILE`` = ``ci`` | ``laptop`` (default) | ``gpu``. A notebook states its sizes in
place with :meth:`Profile.pick`, so a reader sees what each profile runs::

    P = get_profile()
    steps = P.pick(ci=30, laptop=2000, gpu=10000)

Defined in chapter 0, Setup.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

PROFILE_NAMES: tuple[str, ...] = ("ci", "laptop", "gpu")
DEFAULT_PROFILE = "laptop"
ENV_VAR = "COURSE_PROFILE"

T = TypeVar("T")


@dataclass(frozen=True)
class Profile:
    """A named run profile. ``name`` is one of :data:`PROFILE_NAMES`."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in PROFILE_NAMES:
            raise ValueError(
                f"Unknown course profile {self.name!r}; expected one of {', '.join(PROFILE_NAMES)}. "
                f"Set {ENV_VAR}=ci|laptop|gpu or pass the name explicitly."
            )

    def pick(self, *, ci: T, laptop: T, gpu: T | None = None) -> T:
        """The value for this profile; ``gpu`` defaults to ``laptop`` when not given."""
        if self.name == "ci":
            return ci
        if self.name == "gpu" and gpu is not None:
            return gpu
        return laptop

    @property
    def is_ci(self) -> bool:
        return self.name == "ci"

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.name


def current_profile_name(name: str | None = None) -> str:
    """``name`` if given, else ``$COURSE_PROFILE``, else ``laptop``; normalised to lower case."""
    raw = name if name is not None else os.environ.get(ENV_VAR, "") or DEFAULT_PROFILE
    if not isinstance(raw, str):
        raise TypeError(f"profile name must be a string like 'ci', got {type(raw).__name__}")
    return raw.strip().lower()


def get_profile(name: str | None = None) -> Profile:
    """The active :class:`Profile` (argument > environment > default ``laptop``)."""
    return Profile(current_profile_name(name))
