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

# the local default: flag -> value, each unless given
LOCAL = {
    "--runner": "FnApiRunner",
    "--direct_running_mode": "multi_processing",
    "--direct_num_workers": "0",  # Beam's "one per core"
}


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


def pipeline_options(argv: Sequence[str]):
    """Beam's ``PipelineOptions`` of ``argv``: without ``--runner``, the local default."""
    given = {a.split("=", 1)[0] for a in argv}
    defaults = (
        [] if "--runner" in given else [f"{k}={v}" for k, v in LOCAL.items() if k not in given]
    )
    return _options_class()([*defaults, *argv])
