"""Compute cycles of a GEMM on a rows x cols systolic array, for each of SCALE-Sim 3.0's dataflows.

A GEMM is M output positions x K reduction depth x N output channels (a conv through im2col).
One operand stays in the array for a fold while the other streams through it; SCALE-Sim 3.0
(scalesim/compute/systolic_compute_{ws,os,is}.py) counts, per fold:

* weight stationary: a K x N weight tile is held; folds = ceil(K/R) x ceil(N/C); each fold loads
  the tile (R cycles), streams the M input rows, then fills and drains: 2R + C + M - 2 cycles.
* output stationary: each PE accumulates one output; folds = ceil(M/R) x ceil(N/C); both
  operands stream the K-deep reduction, then fill and drain: R + C + K - 2 cycles (no tile to load).
* input stationary: a K x M input tile is held; folds = ceil(K/R) x ceil(M/C); each fold loads
  it (R cycles), streams the N filters, then fills and drains: 2R + C + N - 2 cycles.

That is, per fold: load + stream + R + C - 2. With ``double_buffering`` the next tile loads
while the current fold streams (the TPU v1's weight FIFO), so a fold takes max(stream, load) +
R + C - 2 instead; SCALE-Sim's compute model does not double-buffer (load + stream).
"""
from __future__ import annotations

import numpy as np

#: which GEMM dimension maps to the array's rows, to its columns, and which one streams
_MAPPING = {
    "weight_stationary": ("k", "n", "m"),
    "output_stationary": ("m", "n", "k"),
    "input_stationary": ("k", "m", "n"),
}


class SystolicArray:
    """A rows x cols array running one dataflow; cycles are vectorised over configs."""

    def __init__(self, fabric):
        self.rows, self.cols, self.dataflow = fabric.rows, fabric.cols, fabric.dataflow
        self.on_rows, self.on_cols, self.streamed = _MAPPING[fabric.dataflow]
        # an output-stationary array starts each fold from zeroed accumulators: nothing to load
        if fabric.dataflow == "output_stationary":
            self.load = 0
        else:
            self.load = fabric.tile_load_cycles if fabric.tile_load_cycles is not None else fabric.rows
        self.double_buffering = bool(fabric.double_buffering)
        self.fill_drain = self.rows + self.cols - 2

    def cycles(self, m, k, n, groups, macs):
        """Cycles of ``groups`` GEMMs of m x k x n (arrays broadcast together); 0 where empty."""
        dims = {"m": m, "k": k, "n": n}
        folds = groups * -(-dims[self.on_rows] // self.rows) * -(-dims[self.on_cols] // self.cols)
        stream = dims[self.streamed]
        per_fold = np.maximum(stream, self.load) if self.double_buffering else stream + self.load
        cycles = folds * (per_fold + self.fill_drain)
        if self.dataflow == "output_stationary":  # its folds count M, not the (possibly empty) K x N
            cycles = np.where((k > 0) & (n > 0), cycles, 0)
        return cycles

    def describe(self) -> str:
        buffering = ("double-buffered: the next tile loads while a fold streams" if self.double_buffering
                     else "not double-buffered: each fold loads its tile first (SCALE-Sim's model)")
        load = "" if self.dataflow == "output_stationary" else f", {self.load} cycles to load a tile, {buffering}"
        return f"{self.rows}x{self.cols} systolic array, {self.dataflow.replace('_', '-')}{load}"
