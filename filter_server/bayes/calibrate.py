"""Calibration: turning the combined score into a spam probability that means what it says.

Fisher/Robinson chi-squared combining gives a score in [0, 1] that sorts messages well but
is not a probability: most messages land at the very ends, and the borderline ones crowd
into a sliver around 0.5 (strong evidence both ways), where a difference of 0.01 separates
mostly-ham from mostly-spam. A policy adds `weight * (2p - 1)` to the rule scores, so it
needs p on a scale where 0.8 means "8 in 10 such messages were spam".

Training therefore scores every training message with a model that did not see it (k-fold
cross-validation), fits a monotone (isotonic) map from raw score to the observed spam share
with the pool-adjacent-violators algorithm, and stores it as a few knots; scoring
interpolates linearly between them. The map is monotone, so it never reorders messages.
"""

from __future__ import annotations

import bisect
from typing import Iterable, Sequence


class Calibration:
    """A monotone piecewise-linear map from raw score to probability, given by knots."""

    def __init__(self, knots: Sequence[tuple[float, float]]) -> None:
        if not knots:
            raise ValueError("a calibration needs at least one knot")
        xs = [float(x) for x, _ in knots]
        ys = [float(y) for _, y in knots]
        if any(b < a for a, b in zip(xs, xs[1:])) or any(b < a for a, b in zip(ys, ys[1:])):
            raise ValueError("calibration knots must be non-decreasing in both coordinates")
        if any(not 0.0 <= v <= 1.0 for v in xs + ys):
            raise ValueError("calibration knots must lie in [0, 1] x [0, 1]")
        self.xs, self.ys = xs, ys

    @property
    def knots(self) -> list[tuple[float, float]]:
        return list(zip(self.xs, self.ys))

    def __call__(self, raw: float) -> float:
        xs, ys = self.xs, self.ys
        i = bisect.bisect_right(xs, raw)
        if i == 0:
            return ys[0]
        if i == len(xs):
            return ys[-1]
        x0, x1 = xs[i - 1], xs[i]
        if x1 == x0:
            return ys[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (raw - x0) / (x1 - x0)


def fit_isotonic(raw: Iterable[float], is_spam: Iterable[bool], *,
                 min_block: int = 1) -> Calibration:
    """Fit the monotone map from raw scores to spam share (pool adjacent violators).

    Messages are first grouped into runs of at least `min_block` (equal raw scores always
    share a run), so a handful of borderline messages cannot make a step on their own. Each
    pooled block becomes one knot at its mean raw score and its spam share, smoothed towards
    1/2 by one pseudo-message so a small block never claims certainty; between knots the map
    is linear, beyond the outermost knots flat."""
    points = sorted(zip(raw, is_spam))
    if not points:
        raise ValueError("no scored messages to calibrate on")
    # groups, then blocks: [spam count, message count, sum of raw scores, highest raw]
    groups: list[list[float]] = []
    for x, spam in points:
        if groups and (groups[-1][3] == x or groups[-1][1] < min_block):
            groups[-1][0] += spam
            groups[-1][1] += 1
            groups[-1][2] += x
            groups[-1][3] = x
        else:
            groups.append([float(spam), 1.0, x, x])
    blocks: list[list[float]] = []
    for group in groups:
        blocks.append(group)
        # pool while the newest block's spam share is not above its predecessor's
        while len(blocks) > 1 and \
                blocks[-2][0] * blocks[-1][1] >= blocks[-1][0] * blocks[-2][1]:
            spam_n, n, total, high = blocks.pop()
            blocks[-1][0] += spam_n
            blocks[-1][1] += n
            blocks[-1][2] += total
            blocks[-1][3] = high
    knots: list[tuple[float, float]] = []
    floor = 0.0
    for spam_n, n, total, _ in blocks:
        # smoothing can pull a tiny block below its neighbour: keep the map monotone
        floor = max(floor, (spam_n + 0.5) / (n + 1.0))
        # clamp: a float sum can land a hair outside [0, 1] or below the previous knot
        center = min(max(total / n, knots[-1][0] if knots else 0.0), 1.0)
        knots.append((center, floor))
    return Calibration(knots)
