"""``dec evaluate`` as a job: report paths checked, the bundled demo as the fallback, ``--weights`` given
to the timm names, and the evaluation run in the torchrun process group.

The command line parses the options into an `EvalSettings`; `plan_evaluation`
turns them and the positional models into an `EvalJob` (or a usage error,
before any work), and `run_evaluation` computes its report on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from dec_cli.jobs import demo
from dec_cli.core import distributed as D
from dec_cli.core.errors import UsageError
from dec_cli.evaluation.evaluate import EvalSettings, ModelSpec, ProgressFn, Report, evaluate
from dec_cli.evaluation.metrics import Threshold
from dec_cli.evaluation.modelnames import report_names
from dec_cli.evaluation.plot import check_plot_path
from dec_cli.evaluation.predictions import check_predictions_path
from dec_cli.evaluation.report import check_writable
from dec_cli.evaluation.reportpath import check_report_path
from dec_cli.backbones.weightsource import PRETRAINED, assign_sources


@dataclass
class EvalJob:
    """What to evaluate, on which data, how; ``demo``: the bundled demo stands in for missing inputs."""

    specs: list[ModelSpec]
    data: str
    settings: EvalSettings
    thresholds: list[Threshold]
    demo: bool = False


@dataclass
class Reports:
    """The report files asked for (None: not written; ``json`` may be ``-``, stdout)."""

    json: Optional[str] = None
    markdown: Optional[str] = None
    plot: Optional[str] = None
    predictions: Optional[str] = None

    def check(self, models: Sequence[str], weights: Sequence[str], data: Optional[str],
              class_map: Optional[str]) -> None:
        """Usage errors, before any work, for a report that cannot be written or would overwrite an input."""
        check_plot_path(self.plot)
        check_predictions_path(self.predictions)
        reports = ((self.json, "--json"), (self.markdown, "--markdown"), (self.plot, "--plot"),
                   (self.predictions, "--predictions"))
        inputs = [("MODEL", m) for m in models if Path(m).is_file()] + [("--weights", w) for w in weights]
        for path, option in reports:
            check_writable(path, option)
            check_report_path(path, option, trees=[("--data", data)],
                              files=inputs + [("--class-map", class_map)] + [(o, p) for p, o in reports if o != option])


def plan_evaluation(models: Sequence[str], data: Optional[str], settings: EvalSettings, *,
                    weights: Sequence[str] = (), pretrained: bool = False, random_init: bool = False,
                    names: Sequence[str] = (), thresholds: Sequence[Threshold] = (),
                    reports: Optional[Reports] = None) -> EvalJob:
    """The job the command line describes; no models and no data: the bundled digits demo."""
    (reports or Reports()).check(models, weights, data, settings.class_map)
    models = list(models)
    is_demo = False
    if not models and data is None:
        demo_models, demo_root = demo.demo_inputs()
        models = [str(p) for p in demo_models]
        zoom_dir = Path(demo_root) / "test-zoom"
        data = str(zoom_dir if zoom_dir.is_dir() else demo_root)
        # The demo shows random-warp metrics beside the zoom sweep.
        settings = replace(settings, warps=4 if settings.warps is None else settings.warps)
        is_demo = True
    elif not models:
        raise UsageError("no MODEL given", "pass DEC checkpoints or timm names before --data")
    elif data is None:
        raise UsageError("no --data DIR given", "pass --data DIR with one subfolder per class")
    specs = _model_specs(models, list(weights), pretrained, random_init)
    for spec, name in zip(specs, report_names(models, names)):
        spec.name = name
    return EvalJob(specs, data, settings, list(thresholds), is_demo)


def _model_specs(models: list[str], weights: list[str], pretrained: bool, random_init: bool) -> list[ModelSpec]:
    """One spec per model; the i-th ``--weights`` file goes to the i-th timm name (checkpoints carry their own).

    Timm names without a file take ``--pretrained`` or ``--random-init``; with neither, a usage error
    (`dec_cli.backbones.weightsource`): a silently random network would report near-perfect consistency.
    """
    return [ModelSpec(m, weights=own, pretrained=source == PRETRAINED, weights_source=source)
            for m, own, source in assign_sources(models, weights, pretrained=pretrained, random_init=random_init)]


def run_evaluation(job: EvalJob, progress: Optional[ProgressFn] = None) -> tuple[Report, bool]:
    """Evaluate the job (every torchrun rank its shard); returns the report and whether this is rank 0.

    ``progress`` is called on rank 0 only.
    """
    with D.process_group(job.settings.device) as info:
        report = evaluate(job.specs, job.data, job.settings, thresholds=job.thresholds,
                          progress=progress if info.is_main else None)
    return report, info.is_main
