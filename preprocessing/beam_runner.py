"""Beam's pipeline options from the flags a command does not know itself (``--runner
DataflowRunner --project ... --region ... --temp_location gs://...``), with the local default.

The local default is Beam's ``FnApiRunner`` with one worker process per core
(``--direct_running_mode multi_processing --direct_num_workers 0``), not ``DirectRunner``,
which in Beam 2.77 first tries Prism, a binary it downloads at run time. Beam is imported when
a function is called (the ``beam`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence

from .extras import needs


def _options_class():
    with needs("beam", "Beam pipelines"):
        from apache_beam.options.pipeline_options import PipelineOptions
    return PipelineOptions


def unknown_flags(argv: Sequence[str]) -> list[str]:
    """The flags of ``argv`` that are no Beam pipeline option (each with its value, if any)."""
    import logging

    options = _options_class()(list(argv))
    # Beam logs "Discarding unparseable args" for the unknown ones; they are reported here
    logger = logging.getLogger("apache_beam.options.pipeline_options")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        known = options.get_all_options()
        unknown = set(options.get_all_options(retain_unknown_options=True)) - set(known)
    finally:
        logger.setLevel(level)
    out = []
    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[0].lstrip("-").replace("-", "_")
        if arg.startswith("-") and name in unknown:
            value = "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("-")
            out += [arg, argv[i + 1]] if value else [arg]
    return out


def runner_name(name: str) -> str:
    """The class name of the Beam runner ``name`` (a runner's name, or a dotted class path);
    ValueError naming it when Beam knows no such runner."""
    _options_class()  # the beam extra, or its error
    from apache_beam.runners.runner import create_runner

    try:
        return type(create_runner(name)).__name__
    except (ValueError, ImportError, AttributeError) as e:
        raise ValueError(f"{name}: not a Beam runner ({type(e).__name__}: {e})") from None


def pipeline_options(argv: Sequence[str]):
    """Beam's ``PipelineOptions`` of ``argv``: without ``--runner``, ``FnApiRunner``; there, a
    worker process per core unless ``--direct_running_mode`` / ``--direct_num_workers`` say
    otherwise. ValueError for a runner Beam does not know (``runner_name``)."""
    argv = list(argv)
    given = {a.split("=", 1)[0] for a in argv}
    if "--runner" not in given:
        argv.insert(0, "--runner=FnApiRunner")
    options = _options_class()(argv).get_all_options()
    if runner_name(options["runner"]) == "FnApiRunner":
        mode = options["direct_running_mode"]
        if "--direct_running_mode" not in given:
            mode = "multi_processing"
            argv.append(f"--direct_running_mode={mode}")
        if "--direct_num_workers" not in given and mode == "multi_processing":
            argv.append("--direct_num_workers=0")  # Beam's "one per core"
    return _options_class()(argv)
