"""Photos -> cartoons: ``p2c-infer INPUTS... --output DIR --weights WEIGHTS``.

``p2c-infer --compile_only --topology NAME --output DIR`` compiles the generator for a TPU slice
or GPU machine instead and writes ``DIR/compile_report.json`` (docs/tpu.md).

A re-run into the same ``--output`` (after a kill, say) skips the inputs already done.
``--runner NAME`` runs the job on Apache Beam (``p2c_jax.beam_inference``), the flags this
command does not know going to Beam's pipeline options; without it, one process on this host's
devices (``p2c_jax.cartoonize``).
Exit status: 0 when every input was done, 1 when some failed, 2 when none could be done or the
weights (or a preprocessing backend) are unusable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from p2c_jax.cli.common import (
    add_compile_cache_flag,
    add_compile_only_flags,
    add_img_size_flag,
    add_precision_flag,
    compile_only_done,
    setup_logging,
    start_compile_only,
    str2bool,
    unusable_weights,
    use_compile_cache,
)

NET = "genA2B"


def build_parser() -> argparse.ArgumentParser:
    from preprocessing.flags import Parser, add_backend_flags, number

    p = Parser(prog="p2c-infer", description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="*", help="photo files, folders (recursive) or globs")
    p.add_argument(
        "--output",
        "-o",
        required=True,
        help="output folder, local or gs://: NAME.png per input (relative names kept), report.jsonl",
    )
    p.add_argument(
        "--weights",
        help="the original photo2cartoon_weights.pt, our checkpoint directory or a "
        "training workdir (its newest step that restores); with --compile_only, optional",
    )
    p.add_argument(
        "--batch_size",
        type=number(int, minimum=1),
        default=None,
        help="images per forward pass, rounded up to a multiple of the device count "
        "(default: 8 per accelerator, 1 per CPU device)",
    )
    add_img_size_flag(p)
    p.add_argument(
        "--no_preprocess",
        action="store_true",
        help="inputs are aligned faces: only resized to --img_size (INTER_AREA), no mask",
    )
    p.add_argument(
        "--side_by_side",
        action="store_true",
        help="write the face the generator saw and its cartoon side by side",
    )
    p.add_argument(
        "--compare_torch",
        action="store_true",
        help="also run our PyTorch port; report max |diff| and PSNR per image and overall",
    )
    p.add_argument(
        "--whole_photo",
        action="store_true",
        help="cartoonize every face and paste each back into the whole photo (same size and "
        "orientation); the report names the faces found and used",
    )
    p.add_argument(
        "--max_faces",
        type=number(int, minimum=1),
        default=10,
        help="with --whole_photo: the most faces per photo, largest first (default: %(default)s)",
    )
    p.add_argument(
        "--min_face",
        type=number(float, minimum=0),
        default=40,
        help="with --whole_photo: the smallest face used, in pixels (the longer side of its "
        "landmarks' box; default: %(default)s)",
    )
    p.add_argument(
        "--save_faces",
        action="store_true",
        help="with --whole_photo: also write each face's cartoon as NAME_face{i}.png",
    )
    p.add_argument(
        "--workers",
        type=number(int, minimum=1),
        default=min(4, os.cpu_count() or 1),
        help="decoding/preprocessing threads",
    )
    add_backend_flags(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="do every input again and start a new report (after changing the weights or "
        "flags); by default the inputs that report.jsonl in --output names as done, with "
        "their outputs there, are skipped",
    )
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--runner",
        help="run on Apache Beam (pip install 'p2c-jax[beam]'): FnApiRunner (worker processes "
        "on this host, one per core; --direct_num_workers N), DataflowRunner, FlinkRunner, "
        "SparkRunner...; the flags p2c-infer does not know go to Beam's pipeline options. "
        "Default: one process that owns this host's devices",
    )
    add_precision_flag(p)
    add_compile_cache_flag(p)
    add_compile_only_flags(p, "the generator's forward pass")
    p.add_argument(
        "--ch",
        type=number(int, minimum=1),
        default=32,
        help="with --compile_only and no --weights: the generator's ngf (default: %(default)s, "
        "the released one's)",
    )
    p.add_argument(
        "--light",
        type=str2bool,
        default=True,
        help="with --compile_only and no --weights: a light generator (default: %(default)s)",
    )
    return p


def compile_only(args: argparse.Namespace) -> int:
    """``--compile_only``: the report of the generator (``--weights``' or ``--ch``
    ``--light``'s) on ``--topology``; exit status 0, or 2 with one line saying why not."""
    from p2c_jax import inference_report
    from p2c_jax.inference import output_spec
    from p2c_jax.nn.models import NetSpec
    from p2c_jax.weights.checkpoint import CheckpointError
    from p2c_jax.weights.convert import load_any

    try:
        start_compile_only(args.topology)
        spec = NetSpec("generator", args.ch, img_size=args.img_size or 256, light=args.light)
        if args.weights:
            try:
                spec = load_any(args.weights, [NET])[NET][0]
            except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways
                print(unusable_weights(args.weights, e), file=sys.stderr)
                return 2
        spec = output_spec(spec, args.img_size)
        r = inference_report.report(
            spec,
            args.precision,
            args.topology,
            args.num_slices,
            args.batch_size,
            args.max_batch_search,
        )
    except (ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return compile_only_done(inference_report.table(r), r, args.output)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None):
    """The flags, and those for Beam: with ``--runner`` the flags ``parser`` does not know that
    are Beam pipeline options (others are refused, as p2c-preprocess does); without, those
    are errors."""
    argv = list(sys.argv[1:] if argv is None else argv)
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--runner")
    if probe.parse_known_args(argv)[0].runner is None:
        return parser.parse_args(argv), []
    from preprocessing import beam_runner
    from preprocessing.extras import MissingExtraError

    def not_beams(rest: list[str]) -> list[str]:
        try:
            return beam_runner.unknown_flags(rest)
        except MissingExtraError:  # main says so, naming the extra
            return []

    return parser.parse_args_passing(argv, not_beams)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    parser = build_parser()
    args, beam_flags = parse(parser, argv)
    if args.compile_only:
        return compile_only(args)
    if not args.inputs or not args.weights:
        parser.error(
            "the following arguments are required: "
            + ("inputs" if not args.inputs else "--weights")
        )
    if args.whole_photo and (args.no_preprocess or args.compare_torch):
        parser.error("--whole_photo finds the faces: not with --no_preprocess or --compare_torch")
    if args.runner and (args.whole_photo or args.compare_torch):
        parser.error("--runner: not with --whole_photo or --compare_torch")
    options = None
    if args.runner:
        from preprocessing.extras import MissingExtraError

        try:
            from p2c_jax import beam_inference
            from preprocessing import beam_runner

            options = beam_runner.pipeline_options(["--runner", args.runner, *beam_flags])
        except MissingExtraError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except ValueError as e:
            print(f"error: --runner {e}", file=sys.stderr)
            return 2
    use_compile_cache(args.compile_cache)
    from p2c_jax import cartoonize, paths
    from p2c_jax.inference import BatchedGenerator, default_batch_size, load_generator
    from preprocessing.files import discover, report_missing
    from preprocessing.flags import preprocessor_from_flags

    try:
        output = paths.as_path(args.output)
    except ValueError as e:
        print(f"error: --output {e}", file=sys.stderr)
        return 2
    # a local output folder inside an input folder: its cartoons are not inputs
    local = None if paths.is_remote(output) else Path(output)
    if local is not None and local.exists() and not local.is_dir():
        print(f"error: --output {output}: exists and is not a folder", file=sys.stderr)
        return 2
    items = [(p, rel) for p, rel in discover(args.inputs) if local not in p.absolute().parents]
    if report_missing(items, args.inputs):  # said before the model loads
        return 2
    try:
        generator = BatchedGenerator(
            load_generator(args.weights, NET, args.precision, args.img_size),
            args.batch_size or default_batch_size(),
        )
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways
        print(unusable_weights(args.weights, e), file=sys.stderr)
        return 2
    try:
        reference = cartoonize.torch_twin(generator) if args.compare_torch else None
    except ImportError as e:
        print(f"error: --compare_torch: {e}", file=sys.stderr)
        return 2
    make = None if args.no_preprocess else partial(preprocessor_from_flags, args)
    try:
        if args.whole_photo:
            from p2c_jax import whole_photo

            prepare = whole_photo.PhotoPreparer(
                partial(preprocessor_from_flags, args, all_faces=True),
                generator.size,
                args.max_faces,
                args.min_face,
            )
        else:
            prepare = cartoonize.Preparer(make, generator.size)
    except Exception as e:  # noqa: BLE001 - a missing backend or model file
        print(
            f"error: preprocessing backend unusable ({type(e).__name__}: {e}); install "
            "pip install -e '.[preprocess]' or use --no_preprocess for aligned faces",
            file=sys.stderr,
        )
        return 2
    if options is not None:
        handler = beam_inference.GeneratorHandler(
            os.fspath(paths.as_path(args.weights)),
            generator.batch_size,
            net=NET,
            precision=args.precision,
            img_size=args.img_size,
            worker_setup=partial(use_compile_cache, args.compile_cache),
        )
        summary = beam_inference.run(
            items,
            output,
            handler,
            beam_inference.Prepare(make, generator.size),
            options,
            side_by_side=args.side_by_side,
            overwrite=args.overwrite,
        )
        print(summary.line(), file=sys.stderr)
        print(_wrote(output), file=sys.stderr)
        return summary.exit_code
    if args.whole_photo:
        summary, faces = whole_photo.run(
            items,
            output,
            generator,
            prepare,
            side_by_side=args.side_by_side,
            save_faces=args.save_faces,
            workers=args.workers,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
        print(f"{summary.line()}; {faces.line()}", file=sys.stderr)
        print(_wrote(output), file=sys.stderr)
        return summary.exit_code
    summary, diff = cartoonize.run(
        items,
        output,
        generator,
        prepare,
        side_by_side=args.side_by_side,
        reference=reference,
        workers=args.workers,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(summary.line() + (f"; {diff.line()}" if diff and diff.pixels else ""), file=sys.stderr)
    print(_wrote(output), file=sys.stderr)
    return summary.exit_code


def _wrote(output) -> str:
    from preprocessing.files import is_url
    from preprocessing.report import PARTS_SUFFIX, REPORT_NAME

    report = REPORT_NAME + (PARTS_SUFFIX + "/" if is_url(output) else "")
    return f"wrote {output}/: the cartoons and {report} (a line per input)"


if __name__ == "__main__":
    sys.exit(main())
