"""``hyctas eval``: mIoU of trained weights (paper section 4.2, "Evaluation"; Figure 5)."""

from __future__ import annotations

from typing import Optional

import typer

from hyctas_dsl.cli_support import TASK_HELP, fail_usage, load_arch, out_dir_option, run_cli_job, with_task


def parse_scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        scales = ()
    if not scales or any(not 0.1 <= s <= 4 for s in scales):
        raise fail_usage(f"--scales must be a comma-separated list of factors in 0.1..4, like 0.75,1,1.25, not {text!r}")
    return scales


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        file: str = typer.Argument(..., help="Source file (.hy) holding the arch."),
        weights: str = typer.Option(..., "--weights", "-w", help="model.safetensors (or a `hyctas train` run directory)."),
        arch_name: Optional[str] = typer.Option(None, "--arch", help="Which arch of the file (default: the only one)."),
        space: Optional[str] = typer.Option(None, "--space", help="Validate against this space file."),
        data: str = typer.Option("digits", "--data", help="digits | cityscapes:DIR | ade20k:DIR | folder:DIR (its val split)."),
        flip: bool = typer.Option(False, "--flip", help="Average with the horizontally flipped image."),
        scales: str = typer.Option("1", "--scales", help="Multi-scale inference, e.g. 0.75,1,1.25 [default: single scale]."),
        images: Optional[int] = typer.Option(None, "--images", help="Evaluate the first N validation images [default: all]."),
        out: Optional[str] = typer.Option(None, "--out", help="Write eval.json, confusion.npy/.csv and predictions.png here."),
        samples: int = typer.Option(6, "--samples", help="Rows of the picture grid."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        task: Optional[str] = typer.Option(None, "--task", help=TASK_HELP),
        center_threshold: float = typer.Option(0.1, "--center-threshold", help="Panoptic: centre heatmap threshold."),
        top_k: int = typer.Option(200, "--top-k", help="Panoptic: at most this many centres per image."),
        stuff_area: Optional[int] = typer.Option(None, "--stuff-area", help="Panoptic: smallest stuff segment in pixels [default: 2048 at 1024x2048, scaled with the image area]."),
    ) -> None:
        """Evaluate trained weights on a data set's validation split: IoU per class and mIoU,
        single-scale without flipping by default (as the paper reports), --flip and --scales
        optional. With --out: eval.json, the confusion matrix (.npy, .csv; rows = ground
        truth) and a picture grid of image / ground truth / prediction (Figure 5).
        A panoptic arch (`task panoptic`, or --task panoptic) prints PQ / SQ / RQ per class,
        for things, stuff and all, and mIoU; its grid colours instances apart.

        Exit 0 on success, 1 when the arch is invalid, 2 for unreadable files, weights of
        another arch or class count, and bad options.
        """
        scale_list = parse_scales(scales)
        if images is not None and images < 1:
            raise fail_usage("--images must be at least 1")
        out_dir_option(out)
        arch, _text = load_arch(file, arch_name, space)
        arch = with_task(arch, task)
        if arch.task == "panoptic":
            if scale_list != (1.0,) or flip:
                raise fail_usage("panoptic evaluation is single-scale without flip (no --scales, --flip)")
            if not 0 <= center_threshold < 1 or top_k < 1 or (stuff_area is not None and stuff_area < 0):
                raise fail_usage("--center-threshold must lie in [0, 1), --top-k be positive, --stuff-area not negative")
            post = {"threshold": center_threshold, "top_k": top_k, **({"stuff_area": stuff_area} if stuff_area is not None else {})}

            def panoptic_job():
                from hyctas_dsl.jobs.panoptic_eval import eval_command
                from hyctas_dsl.jobs.weights import load_weights

                eval_command(arch, weights, data, images, out, samples, device, quiet, load_weights, post)

            run_cli_job(panoptic_job)
            return

        def job():
            from hyctas_dsl.data import make_datasets
            from hyctas_dsl.jobs import dist
            from hyctas_dsl.jobs.dataset_eval import evaluate, format_table, save_eval
            from hyctas_dsl.jobs.weights import load_weights

            info = dist.init(device)
            _train, val = make_datasets(data)
            model, _n = load_weights(weights, arch, val.info.num_classes)
            model = model.to(info.device)
            n = len(val) if images is None else min(images, len(val))
            from hyctas_dsl.jobs.fps import default_channels_last

            res = evaluate(model, val, list(range(n)), info.device, scale_list, flip, samples=samples if out else 0,
                           dist_info=info, progress=not quiet and info.is_main,
                           channels_last=default_channels_last(info.device))
            if not info.is_main:
                return
            typer.echo(format_table(res))
            if out:
                paths = save_eval(res, val.info, out, f"{arch.name}: mIoU {100 * res.miou:.1f}%")
                typer.echo(f"wrote {paths['json']}, {paths['npy']}, {paths['csv']}, {paths['grid']}")

        run_cli_job(job)
