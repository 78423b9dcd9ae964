"""Named protocols of ``dec digits --protocol``: sets of defaults for its other options.

* ``default``: two digits, 20 classes, every split at scales 0.6-1.6 (the
  options' own defaults; a default build is byte-identical to earlier versions).
* ``wide``: extrapolation. Train and validation digits at 0.8-1.25, test digits
  at 0.4-2; the zoom sweep spans 0.4-2.
* ``paper``: the paper's locally scaled MNIST at CPU scale. Three digits per
  image (a 2 x 2 grid of 32-pixel cells, 64 x 64), each scaled on its own by a
  log-uniform factor in 0.4-2 in train, validation *and* test; zoom sweep
  0.4-2. The paper uses all 1000 three-digit numbers as classes; here
  ``PAPER_CLASSES = 200`` with 6,000 training composites (30 per class), 400
  validation (2 per class) and 600 test composites (3 per class). Why not 1000:
  the head has no notion of digits, so each class needs its own examples, and
  30 per class at 1000 classes means 30,000 training composites (and at least
  1000 each in validation and test, 7,000 zoom images), far past a CPU-sized
  run; each of the 8,000 bundled digits would also appear in about 12
  training composites. 200 is the most classes that keep 30 examples per class within
  6,000 composites, twice the default size. Every split holds every class,
  and every digit value appears equally often in every position.

A digit's 28-pixel box is ``GLYPH_FRACTION`` (0.625) of its cell at scale 1,
so it fits its cell up to scale 1.6; at 2 the 40-pixel box is cropped to the
32-pixel cell (digits never overlap). MNIST's blank margin absorbs most of it
(docs/commands.md, "dec digits", gives the measured ink loss).

Options typed on the command line always win over the protocol's values.
Nothing here prints, exits or imports torch.
"""

from __future__ import annotations

from typing import Any, Mapping

from dec_cli.core.errors import UsageError

PAPER_CLASSES = 200
WIDE_ZOOM = "0.4,0.6,0.8,1,1.25,1.6,2"
#: Protocol name -> `dec digits` parameter name -> value as the command line spells it.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "default": {},
    "wide": {"train_scale_range": "0.8,1.25", "scale_range": "0.4,2", "zoom": WIDE_ZOOM},
    "paper": {"digits": 3, "classes": PAPER_CLASSES, "n_train": 6000, "n_val": 400, "n_test": 600,
              "scale_range": "0.4,2", "train_scale_range": None, "zoom": WIDE_ZOOM},
}


def check_protocol(name: str) -> str:
    """``name`` if it is a protocol; a usage error naming the choices otherwise."""
    if name not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {name!r}",
                         "paper: 3 digits, each scaled in 0.4-2 in every split")
    return name


def protocol_values(name: str, values: Mapping[str, Any], typed: set[str]) -> dict[str, Any]:
    """``values`` with every option the protocol sets replaced by its value, unless the option was ``typed``."""
    chosen = dict(values)
    for key, value in PROTOCOLS[check_protocol(name)].items():
        if key not in typed:
            chosen[key] = value
    return chosen
