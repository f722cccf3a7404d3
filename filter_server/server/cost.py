"""How long classifying a message takes, learnt from the messages classified: a fixed cost
per message plus a cost per parsed byte, fitted online. Admission control sums it over the
calls queued ahead of a new one to decide whether its answer can come within its deadline.

One running average of seconds per byte (with a fixed per-message allowance) was used before;
it is set by whatever mail is most common, and ordinary mail made it five times too low
for the 4 MiB a large message costs, so during a burst of large messages the server admitted
calls that then waited out their deadlines (the fault suite's large_burst scenario).
"""

from __future__ import annotations

# Starting point until there are observations: about what the corpus' mail and a 4 MiB
# parse measure on one core (1.2 ms per message, 40 ns per parsed byte).
INITIAL_SECONDS_PER_MESSAGE = 1.2e-3
INITIAL_SECONDS_PER_BYTE = 4e-8
# Weight of the past: each observation counts this much less at every new one (a memory
# of a few hundred messages), so the fit follows a change of mail or of CPU contention.
DECAY = 0.995
# The per-byte slope is only refitted when the sizes seen differ enough to show it.
MIN_SIZE_VARIANCE = (16 * 1024) ** 2


class CostModel:
    """seconds ≈ per_message + per_byte × parsed bytes, by exponentially weighted least
    squares. Not thread-safe: the caller serializes `observe`."""

    def __init__(self) -> None:
        self.per_message = INITIAL_SECONDS_PER_MESSAGE
        self.per_byte = INITIAL_SECONDS_PER_BYTE
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, parsed_bytes: int, seconds: float) -> None:
        x, y = float(parsed_bytes), seconds
        self._w = DECAY * self._w + 1.0
        self._x = DECAY * self._x + x
        self._y = DECAY * self._y + y
        self._xx = DECAY * self._xx + x * x
        self._xy = DECAY * self._xy + x * y
        mean_x = self._x / self._w
        variance = self._xx / self._w - mean_x * mean_x
        if variance > MIN_SIZE_VARIANCE:
            slope = (self._xy / self._w - mean_x * self._y / self._w) / variance
            self.per_byte = max(0.0, slope)
        self.per_message = max(0.0, (self._y - self.per_byte * self._x) / self._w)

    def seconds(self, messages: int, parsed_bytes: int) -> float:
        """Expected seconds to classify `messages` messages of `parsed_bytes` in all."""
        return self.per_message * messages + self.per_byte * parsed_bytes


def idle_seconds(parsed_bytes: int) -> float:
    """What classifying one message of `parsed_bytes` takes on an unloaded core (the
    starting point above): a deadline shorter than that cannot be met anywhere."""
    return INITIAL_SECONDS_PER_MESSAGE + INITIAL_SECONDS_PER_BYTE * parsed_bytes
