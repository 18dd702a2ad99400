"""Bad inputs of `fastall cells` and `fastall screen` (issue 30); added to :data:`tests.bad_inputs.CASES`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.bad_inputs import Case, Env


def _smear(env: Env, kind: str) -> Path:
    folder = env.tmp / "smears"
    folder.mkdir(exist_ok=True)
    if kind == "empty":  # red cells, platelets and debris, no leukocyte
        from fastall.data.synth_smear import draw_smear, smear_look

        rng = np.random.default_rng(0)
        img = draw_smear(rng, smear_look(rng, (0.0, 0.2)), 320, 240, leukocytes=(0, 1))[0]
    elif kind == "grey":
        rng = np.random.default_rng(0)
        img = np.repeat(rng.integers(60, 220, (120, 160, 1), dtype=np.uint8), 3, axis=2)
    else:  # a synthetic smear
        from fastall.data.synth_smear import synthesize_smears

        synthesize_smears(env.tmp / "synth", patients_per_class=1, smears_per_patient=1, width=320)
        return env.tmp / "synth"
    Image.fromarray(img).save(folder / f"{kind}.png")
    return folder


def _cells(env: Env, kind: str, *extra: str) -> list[str]:
    return ["cells", str(_smear(env, kind)), "--out", str(env.tmp / "cells"), *extra]


def _bad_boxes(env: Env) -> list[str]:
    boxes = env.tmp / "boxes.csv"
    boxes.write_text("file,x,y\na.png,1,2\n")
    return _cells(env, "synth", "--boxes", str(boxes))


def _foreign_boxes(env: Env) -> list[str]:
    boxes = env.tmp / "boxes.csv"
    boxes.write_text("image,xmin,ymin,xmax,ymax\nelsewhere.png,1,2,30,40\n")
    return _cells(env, "synth", "--boxes", str(boxes))


def _inside(env: Env) -> list[str]:
    folder = _smear(env, "synth")
    return ["cells", str(folder), "--out", str(folder / "cells")]


def _screen(env: Env, kind: str) -> list[str]:
    return ["screen", str(env.run), str(_smear(env, kind)), "--out", str(env.tmp / "screen")]


def _screen_file(env: Env) -> list[str]:
    model = env.tmp / "model.pt"
    model.write_bytes(b"not a run")
    return ["screen", str(model), str(_smear(env, "synth")), "--out", str(env.tmp / "screen")]


SMEAR_CASES = [
    Case(
        "smears",
        "cells on a smear without any leukocyte (a row with 0 and a note)",
        lambda e: _cells(e, "empty"),
        expect="reported",
        fragments=("no leukocyte found",),
        show="no leukocyte",
    ),
    Case(
        "smears",
        "cells on a greyscale image (no stain to separate)",
        lambda e: _cells(e, "grey"),
        fragments=("--method",),
    ),
    Case(
        "smears",
        "cells on a smear over the pixel budget",
        lambda e: _cells(e, "synth"),
        fragments=("--max-pixels",),
        env=(("FASTALL_MAX_PIXELS", "1000"),),
    ),
    Case(
        "smears",
        "cells --method cellpose without Cellpose installed",
        lambda e: _cells(e, "synth", "--method", "cellpose"),
        fragments=("fastall[cellpose]",),
    ),
    Case("smears", "cells --boxes with other columns", _bad_boxes, fragments=("image,xmin,ymin,xmax,ymax",)),
    Case(
        "smears",
        "cells --boxes naming none of the smears",
        _foreign_boxes,
        fragments=("none of the annotated",),
    ),
    Case("smears", "cells --out inside the smears folder", _inside, fragments=("inside the smears folder",)),
    Case("smears", "screen on a greyscale image", lambda e: _screen(e, "grey"), fragments=("--method",)),
    Case(
        "smears", "screen given a model file instead of a run folder", _screen_file, fragments=("run folder",)
    ),
    Case(
        "smears",
        "screen on a smear without any leukocyte",
        lambda e: _screen(e, "empty"),
        expect="reported",
        fragments=("no leukocyte found", "0 leukocytes"),
        show="no leukocyte",
    ),
]
