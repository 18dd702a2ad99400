"""What `scan` reads from the files themselves: byte-identical copies and image shapes.

Duplicates are found by content hash (``data.fingerprint``, the hash extract records), listed group by group.
Sizes come from the image headers (Pillow opens lazily; no pixels are decoded). A non-square image is
reported once, with the rule that applies to it: every image is resized whole to a square (``--image-size``),
so a non-square cell is stretched, never cropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from fastall.data.duplicates import duplicate_groups
from fastall.data.fingerprint import hash_file
from fastall.data.records import Record

RESIZE_RULE = (
    "every image is resized whole to a square (--image-size, no crop), so non-square images are stretched "
    "to it; crop them square first to keep the cells' shape"
)


@dataclass
class Inspection:
    """Duplicate groups (relative paths), image sizes and the images that could not be read."""

    duplicates: list[dict] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)
    non_square: list[tuple[str, int, int]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The warnings scan prints: duplicates and non-square images, one line each kind."""
        out = []
        if self.duplicates:
            crossing = [g for g in self.duplicates if g["across_classes"] or g["across_patients"]]
            first = " = ".join(self.duplicates[0]["paths"][:3])
            out.append(
                f"{sum(len(g['paths']) for g in self.duplicates)} images are byte-identical copies in "
                f"{len(self.duplicates)} group(s) ({len(crossing)} across patients or classes), "
                f"e.g. {first}: "
                "the same image can sit on both sides of a split; remove the copies, or use "
                "train-head --dedupe (--json lists every group)"
            )
        if self.non_square:
            path, w, h = self.non_square[0]
            out.append(
                f"{len(self.non_square)} image(s) are not square (e.g. {path}: {w}x{h}): {RESIZE_RULE}"
            )
        return out

    def to_json(self) -> dict:
        return {
            "duplicates": self.duplicates,
            "sizes": {f"{w}x{h}": n for (w, h), n in sorted(self.sizes.items())},
            "non_square": [{"path": p, "width": w, "height": h} for p, w, h in self.non_square],
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "resize_rule": RESIZE_RULE,
        }


def inspect_records(records: list[Record]) -> Inspection:
    """Hash and measure every labelled or unlabelled image of ``records``."""
    from PIL import Image

    out = Inspection()
    hashes = []
    for rec in records:
        digest = ""
        try:
            digest = hash_file(rec.path)
            with Image.open(rec.path) as image:
                w, h = image.size
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            reason = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
            out.unreadable.append((rec.rel_path, reason))
            continue
        finally:
            hashes.append(digest)
        out.sizes[(w, h)] += 1
        if w != h:
            out.non_square.append((rec.rel_path, w, h))
    groups = duplicate_groups(hashes, [r.label for r in records], [r.patient for r in records])
    out.duplicates = [
        {
            "paths": [records[i].rel_path for i in g.rows],
            "across_classes": g.across_classes,
            "across_patients": g.across_patients,
        }
        for g in groups
    ]
    return out
