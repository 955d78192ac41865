"""Checked flag values for argparse: one ``type=`` (or ``action=``) per kind of value, so
that a bad value is the usual argparse error (``usage: ...`` then ``error: argument --x:
...``, exit status 2) when the flags are parsed, before anything runs or is written."""
import argparse
import math

# The smallest training crop: the classifier's output stride of 16 leaves a 2x2 map of it;
# a smaller crop leaves a single feature pixel, or none.
MIN_CROP_SIZE = 32
# Pixel pairs lie at distances below the radius (docs/method.md §9): radius 1 has none.
MIN_RADIUS = 2


def _checked(kind, holds, description):
    """The argparse type of a finite ``kind`` (int or float) for which ``holds(value)``."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not holds(value):
            raise argparse.ArgumentTypeError(f"must be {description}, not {text!r}")
        return value
    return parse


def int_at_least(minimum):
    """The argparse type of an integer >= ``minimum``."""
    return _checked(int, lambda value: value >= minimum, f"an integer >= {minimum}")


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
crop_size = int_at_least(MIN_CROP_SIZE)
radius = int_at_least(MIN_RADIUS)
positive_float = _checked(float, lambda value: value > 0, "a number > 0")
non_negative_float = _checked(float, lambda value: value >= 0, "a number >= 0")
fraction = _checked(float, lambda value: 0 <= value <= 1, "a number in [0, 1]")


def values_where(holds, problem):
    """The argparse action of a flag of several values (``nargs``) that must satisfy
    ``holds(values)`` together; else ``argument --x: <problem>, not <values>``."""
    class Checked(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            if not holds(values):
                raise argparse.ArgumentError(self, f"{problem}, not {' '.join(map(str, values))}")
            setattr(namespace, self.dest, values)
    return Checked


OrderedPair = values_where(lambda pair: pair[0] <= pair[1], "the first value must not exceed the second")
ColorJitterStrengths = values_where(lambda strengths: strengths[3] <= 0.5, "the hue strength must be at most 0.5")


def device(text):
    """The argparse type of a torch device name or ``auto``: a CUDA device on a machine
    without CUDA is an error here, not a RuntimeError later."""
    import torch  # here: the toy generator imports this module and needs no torch

    if text == "auto":
        return text
    try:
        kind = torch.device(text).type
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine (use --device cpu)")
    return text
