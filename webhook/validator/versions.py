"""Version numbers as the driver reports them, compared as numbers.

NVIDIA driver versions look like "535.104.05" and CUDA driver API versions like "12.4". Both
must be compared component by component as integers: as strings "535.104.05" < "535.54.03"
would be wrong, and "05" must equal "5". A shorter version is padded with zeros, so a minimum
of "535" is met by "535.0.0" and anything later. NVML gives the CUDA driver API version as one
integer (12040 for 12.4, the same encoding as CUDA's `cuDriverGetVersion`).

Why not ``packaging.version.Version`` (decided in issue 15): it orders "550.54.15" and "12.4"
right and pads with zeros the same way, but (1) it accepts PEP 440 forms no driver reports and
a minimum must not be ("v12", "1.0rc1", "1!2", "535+local"), so the syntax check
(``core/names.VERSION``, shared with the policy) would stay anyway; (2) it normalises the
spelling ("535.104.05" becomes "535.104.5"), so messages would no longer show the version as
nvidia-smi and the policy write it unless the text were kept beside it, which is this class. What
it would replace is the comparison, a dozen lines; a dependency in the init container for that
is not worth it, small as packaging is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import total_ordering

from ..core.names import VERSION


class VersionError(ValueError):
    """A version string that is not dot-separated decimal numbers."""


@total_ordering
@dataclass(frozen=True)
class Version:
    """A dotted version; `text` keeps the spelling for messages, `parts` is what compares."""

    parts: tuple[int, ...]
    text: str

    def _padded(self, width: int) -> tuple[int, ...]:
        return self.parts + (0,) * (width - len(self.parts))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        width = max(len(self.parts), len(other.parts))
        return self._padded(width) == other._padded(width)

    def __lt__(self, other: Version) -> bool:
        width = max(len(self.parts), len(other.parts))
        return self._padded(width) < other._padded(width)

    def __hash__(self) -> int:
        parts = list(self.parts)
        while parts and parts[-1] == 0:
            parts.pop()
        return hash(tuple(parts))

    def __str__(self) -> str:
        return self.text


def parse_version(text: str) -> Version:
    """Parse "535.104.05" or "12.4"; raise VersionError for anything else ("", "v12", "1..2")."""
    cleaned = text.strip()
    if not VERSION.fullmatch(cleaned):
        raise VersionError(f"not a version number (expected digits and dots, like 535.104.05): {text!r}")
    return Version(tuple(int(part) for part in cleaned.split(".")), cleaned)


def cuda_version_from_int(value: int) -> Version:
    """Turn NVML's/CUDA's integer (1000 * major + 10 * minor, 12040) into Version "12.4"."""
    if value <= 0:
        raise VersionError(f"not a CUDA driver version: {value!r}")
    major, rest = divmod(int(value), 1000)
    minor = rest // 10
    return Version((major, minor), f"{major}.{minor}")
