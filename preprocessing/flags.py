"""The commands' argument parser, and the preprocessing backend flags shared by every command
that aligns photos."""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Sequence

from .landmarks import BACKENDS as LANDMARK_BACKENDS
from .landmarks import make_landmarker
from .pipeline import Preprocessor
from .segmentation import BACKENDS as SEG_BACKENDS
from .segmentation import make_segmenter

# a help string that already tells its default: "%(default)s", "(default: 100)", "Default: dynamic"
_TELLS_DEFAULT = re.compile(r"%\(default\)|\bdefault\s*:", re.IGNORECASE)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after a flag's help, unless the help tells it already or X says nothing
    (None, "", a store_true's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        d = action.default
        if (
            d is None
            or d == ""
            or (action.nargs == 0 and isinstance(d, bool))
            or _TELLS_DEFAULT.search(action.help or "")
        ):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """The parser of every ``p2c-*`` command: ``--help`` shows each flag's default,
    and a misspelled flag is answered ``unrecognized arguments: --lrr (did you mean --lr?)``
    (Python 3.11's argparse has no ``suggest_on_error``). Errors exit 2, as argparse's."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error("unrecognized arguments: " + " ".join(map(self._suggest, extras)))
        return namespace

    def _suggest(self, arg: str) -> str:
        """``arg``, followed by ``(did you mean --flag?)`` when it is an unknown flag close to one
        (compared without dashes, and without a ``=value``)."""
        if not arg.startswith(tuple(self.prefix_chars)):
            return arg
        names = {o.lstrip(self.prefix_chars): o for o in reversed(self._option_string_actions)}
        close = difflib.get_close_matches(arg.split("=", 1)[0].lstrip(self.prefix_chars), names, 1)
        return f"{arg} (did you mean {names[close[0]]}?)" if close else arg


def add_backend_flags(p: argparse.ArgumentParser) -> None:
    """``--landmarks --device --segmentation --seg_model``."""
    p.add_argument(
        "--landmarks",
        choices=LANDMARK_BACKENDS,
        default="dlib",
        help="landmark backend (default: dlib, offline)",
    )
    p.add_argument("--device", default="cpu", help="device of the face-alignment backend")
    p.add_argument(
        "--segmentation",
        choices=SEG_BACKENDS,
        default=None,
        help="segmentation backend (default: pb when --seg_model is given, else grabcut)",
    )
    p.add_argument("--seg_model", default=None, help="the original's seg_model_384.pb")


def preprocessor_from_flags(args: argparse.Namespace, all_faces: bool = False) -> Preprocessor:
    """The Preprocessor of the backend flags (loads the models)."""
    seg = args.segmentation or ("pb" if args.seg_model else "grabcut")
    return Preprocessor(
        make_landmarker(args.landmarks, args.device),
        make_segmenter(seg, args.seg_model),
        all_faces=all_faces,
    )
