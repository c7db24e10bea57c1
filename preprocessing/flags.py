"""The commands' argument parser, and the preprocessing backend flags shared by every command
that aligns photos."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable, Sequence

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
    """The parser of every ``p2c-*`` command: ``--help`` shows each flag's default, an error is
    one line (``p2c-infer: error: ...``, exit 2, as argparse's), and a misspelled flag is
    answered ``unrecognized arguments: --lrr (did you mean --lr?)``, also when it is a required
    flag that is missing (Python 3.11's argparse has no ``suggest_on_error``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)
        self._argv: list[str] = []

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        return self.parse_args_passing(args, lambda rest: rest, namespace)[0]

    def parse_args_passing(
        self,
        args: Sequence[str] | None,
        unknown: Callable[[list[str]], list[str]],
        namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        """``parse_args`` that passes on the arguments this parser does not know, for another
        (Beam's options), except those ``unknown(rest)`` returns: refused as parse_args does."""
        self._argv = list(sys.argv[1:] if args is None else args)
        namespace, rest = self.parse_known_args(self._argv, namespace)
        refused = unknown(rest)
        if refused:
            self.error("unrecognized arguments: " + " ".join(map(self._suggest, refused)))
        return namespace, rest

    def error(self, message: str) -> None:  # type: ignore[override]
        """``prog: error: message`` alone (no usage: ``--help`` has it), exit 2. A missing
        required flag is followed by the unknown flags given, with their suggestions."""
        unknown = [a for a in self._argv if self._is_unknown_flag(a)]
        if message.startswith("the following arguments are required") and unknown:
            message += "; unrecognized arguments: " + " ".join(map(self._suggest, unknown))
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _is_unknown_flag(self, arg: str) -> bool:
        """A ``--name`` (or ``--name=value``) that is no flag nor the prefix of one."""
        name = arg.split("=", 1)[0]
        return (
            name.startswith(tuple(self.prefix_chars))
            and not self._negative_number_matcher.match(name)
            and not any(o.startswith(name) for o in self._option_string_actions)
        )

    def _suggest(self, arg: str) -> str:
        """``arg``, followed by ``(did you mean --flag?)`` when it is an unknown flag close to one
        (compared without dashes, and without a ``=value``)."""
        if not arg.startswith(tuple(self.prefix_chars)):
            return arg
        names = {o.lstrip(self.prefix_chars): o for o in reversed(self._option_string_actions)}
        close = difflib.get_close_matches(arg.split("=", 1)[0].lstrip(self.prefix_chars), names, 1)
        return f"{arg} (did you mean {names[close[0]]}?)" if close else arg


def number(
    kind: type[int] | type[float],
    *,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    maximum: float | None = None,
    check: Callable[[int], int] | None = None,
) -> Callable[[str], int | float]:
    """An argparse ``type``: the flag's value as ``kind`` within the given bounds (``minimum`` /
    ``maximum`` inclusive, ``above`` / ``below`` exclusive), and passing ``check`` (which raises
    ValueError), else one error naming the flag: ``expected an integer >= 1, got 0``."""
    bounds = [
        (b, op, test)
        for b, op, test in (
            (minimum, ">=", lambda x, b: x >= b),
            (above, ">", lambda x, b: x > b),
            (below, "<", lambda x, b: x < b),
            (maximum, "<=", lambda x, b: x <= b),
        )
        if b is not None
    ]
    what = ("an integer" if kind is int else "a number") + "".join(
        f"{' and' if i else ''} {op} {b:g}" for i, (b, op, _) in enumerate(bounds)
    )

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not all(test(value, b) for b, _, test in bounds):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        if check is not None:
            try:
                check(value)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some of its messages
    return parse


BACKEND_FLAGS = ("landmarks", "device", "segmentation", "seg_model")  # add_backend_flags's


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
