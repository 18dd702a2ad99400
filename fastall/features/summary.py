"""What one extract did, and the lines it ends with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ExtractSummary:
    path: Path
    images: int
    views: int
    seconds: float
    computed: int = 0
    resumed: int = 0
    loop_seconds: float = 0.0
    cache_bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_existing: bool = False
    device: str = "cpu"
    amp_dtype: str = "fp32"
    key: str = ""
    fill: str = "auto"
    fills: dict[str, int] = field(default_factory=dict)
    precision: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    positive: str = ""

    @property
    def images_per_s(self) -> float:
        """Images computed per second of the extraction loop (decode to stored shard)."""
        return self.computed / self.loop_seconds if self.loop_seconds > 0 else 0.0

    @property
    def forwards_per_s(self) -> float:
        return self.images_per_s * self.views


def describe(summary: ExtractSummary) -> list[str]:
    """The end-of-run summary, one line each."""
    size = f"{summary.cache_bytes / 2**20:,.1f} MiB"
    if summary.skipped_existing:
        lines = [
            f"{summary.path} is already complete with these settings ({summary.images} images x "
            f"{summary.views} views, {size}); nothing to do"
        ]
    else:
        s = summary
        resumed = f"; {s.resumed} resumed" if s.resumed else ""
        lines = [
            f"{s.path}: {s.images} images x {s.views} views in {s.seconds:,.1f} s ({s.computed} done "
            f"at {s.images_per_s:,.1f} img/s = {s.forwards_per_s:,.1f} forwards/s on {s.device}, "
            f"{s.amp_dtype}{resumed}), cache {size}"
        ]
    if summary.positive:
        lines.append(summary.positive)
    if summary.precision and not summary.skipped_existing:
        lines.append(f"precision {summary.precision['precision']}: {summary.precision['reason']}")
    if summary.fills:
        used = ", ".join(f"{name} in {n}" for name, n in summary.fills.items())
        how = (
            "black on a black border, else the border's median colour"
            if summary.fill == "auto"
            else f"--fill {summary.fill}"
        )
        lines.append(
            f"corners uncovered by rotation and zoom in the augmented views are filled with {used} image(s) "
            f"({how}); if the cells sit on another background, choose it with --fill"
        )
    if summary.skipped:
        lines.append(f"skipped {len(summary.skipped)} unreadable image(s):")
        lines += [f"  {path}: {reason}" for path, reason in summary.skipped]
    return lines
