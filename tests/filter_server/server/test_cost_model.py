"""The admission's cost model: seconds per message and per parsed byte, learnt online."""

from __future__ import annotations

import random

from filter_server.server.cost import CostModel

MIB = 1 << 20


def _true_cost(size: int) -> float:
    return 1.2e-3 + 5e-8 * size  # ordinary mail ~1.5 ms, a 4 MiB parse ~0.2 s


def test_mixed_mail_prices_large_messages_right() -> None:
    """Mostly ordinary mail with a few large messages: the old single running average of
    seconds per byte (with a fixed 128 KiB per message) priced a 4 MiB parse at a fifth of
    its cost, and the server admitted large messages it could not answer in time."""
    model = CostModel()
    rng = random.Random(3)
    for _ in range(2000):
        size = 4 * MIB if rng.random() < 0.02 else rng.randrange(2_000, 60_000)
        model.observe(size, _true_cost(size) * rng.uniform(0.9, 1.1))
    for size in (5_000, 512 * 1024, 4 * MIB):
        predicted = model.seconds(1, size)
        assert 0.8 < predicted / _true_cost(size) < 1.25, (size, predicted, _true_cost(size))
    queue = model.seconds(10, 10 * 4 * MIB)
    assert 0.8 < queue / (10 * _true_cost(4 * MIB)) < 1.25


def test_one_size_only_keeps_the_slope_and_fits_the_rest() -> None:
    model = CostModel()
    for _ in range(500):
        model.observe(10_000, 3e-3)  # a slower machine, one size of mail
    assert abs(model.seconds(1, 10_000) - 3e-3) < 3e-4
    assert model.per_byte > 0


def test_the_model_follows_a_change_of_speed() -> None:
    model = CostModel()
    for size in [5_000, 40_000] * 300:
        model.observe(size, _true_cost(size))
    for size in [5_000, 40_000] * 600:  # the machine gets three times slower
        model.observe(size, 3 * _true_cost(size))
    assert 0.8 < model.seconds(1, 20_000) / (3 * _true_cost(20_000)) < 1.25
