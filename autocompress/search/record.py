"""One trial's record: a line of ``trials.jsonl``, read back as a :class:`Trial`.

A Trial is the JSON object itself (a dict, so ``record["metrics"]`` and everything written for
a run keep working) with typed views of what the rest of the package asks of it, each answered
here once: is it feasible, a duplicate, fine-tuned or only screened, what did it cost and score,
what config does it name. :meth:`Trial.of` wraps any record (a plain dict from a test or an old
run included) without copying what is already a Trial.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autocompress.config import CompressionConfig

__all__ = ["Trial", "STATUSES"]

#: ok: met every constraint; infeasible: evaluated and broke one (or pruned by a data-free check);
#: failed: raised while it was built or evaluated
STATUSES = ("ok", "infeasible", "failed")


class Trial(dict):
    """A trial's record with typed access; still the dict written to ``trials.jsonl``."""

    @classmethod
    def of(cls, record: dict) -> "Trial":
        return record if isinstance(record, Trial) else cls(record)

    @property
    def number(self) -> int:
        return int(self["trial"])

    @property
    def status(self) -> str:
        return str(self["status"])

    @property
    def feasible(self) -> bool:
        """Evaluated and within every constraint."""
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def duplicate(self) -> bool:
        """The same config as an earlier trial, whose figures it repeats (never counted twice)."""
        return self.get("duplicate_of") is not None

    @property
    def metrics(self) -> dict[str, Any]:
        return self.get("metrics") or {}

    @property
    def fidelity(self) -> str | None:
        """"full": fine-tuned as the search's recovery says; "screen": built and measured without
        fine-tuning (how every candidate is first judged); None: never evaluated."""
        return self.metrics.get("fidelity")

    @property
    def fine_tuned(self) -> bool:
        return self.fidelity == "full"

    @property
    def screened_only(self) -> bool:
        return self.fidelity == "screen"

    @property
    def energy_reduction(self) -> float | None:
        return self.metrics.get("energy_reduction")

    @property
    def accuracy_drop(self) -> float | None:
        """Points below the uncompressed model, on the validation data the search decides on."""
        return self.metrics.get("accuracy_drop")

    @property
    def training_images(self) -> int:
        """Images through forward and backward to get this candidate (its fine-tuning)."""
        return int(self.metrics.get("training_images") or 0)

    @property
    def has_config(self) -> bool:
        return self.get("config") is not None

    def compression_config(self) -> "CompressionConfig | None":
        """The config this trial evaluated, as a CompressionConfig (None for a failed proposal
        that never became one)."""
        from autocompress.config import CompressionConfig

        raw = self.get("config")
        return None if raw is None else CompressionConfig.from_dict(raw, source=f"trial {self.number}")

    def comparable(self) -> bool:
        """A record whose figures can be compared with others': has a config, is no duplicate,
        did not fail, and has an accuracy drop and an energy reduction."""
        return (self.has_config and not self.duplicate and not self.failed
                and self.accuracy_drop is not None and self.energy_reduction is not None)
