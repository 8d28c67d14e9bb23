"""Prepared instances as a map-style dataset, read from the Parquet shards of a cache entry.

The token ids of a split stay in one flat Arrow buffer (memory-mapped from disk); an item is a few
numpy views into it, so a split of millions of instances costs little memory and no per-item I/O.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["PreparedSplit"]


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column, as numpy arrays."""
    array = column.combine_chunks()
    if isinstance(array, pa.ChunkedArray):  # pragma: no cover - depends on the pyarrow version
        array = array.chunk(0)
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False)
    # A sliced array keeps its parent's offsets; rebase them on its own values.
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


class PreparedSplit:
    """One split ("train" or "eval") of a prepared-data cache entry.

    Items are dicts ``{index, input_ids, segment_b_start, next_sentence_label}`` plus
    ``masked_lm_positions`` and ``masked_lm_ids`` when the split was masked at preparation.
    """

    def __init__(self, directory: str | Path, split: str):
        self.directory = Path(directory)
        self.split = split
        shards = sorted(self.directory.glob(f"{split}-*.parquet"))
        if not shards:
            raise FileNotFoundError(f"no {split!r} shards in {self.directory}")
        table = pa.concat_tables(pq.read_table(shard, memory_map=True) for shard in shards)
        self._values, self._offsets = _flat(table.column("input_ids"))
        self._segment_b_start = table.column("segment_b_start").to_numpy()
        self._next_sentence_label = table.column("next_sentence_label").to_numpy()
        self.masked = "masked_lm_positions" in table.column_names
        if self.masked:
            self._positions, self._mask_offsets = _flat(table.column("masked_lm_positions"))
            self._replacements, _ = _flat(table.column("masked_lm_ids"))
        self.lengths = np.diff(self._offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        start, end = self._offsets[index], self._offsets[index + 1]
        item: dict[str, Any] = {
            "index": int(index),
            "input_ids": self._values[start:end],
            "segment_b_start": int(self._segment_b_start[index]),
            "next_sentence_label": int(self._next_sentence_label[index]),
        }
        if self.masked:
            m0, m1 = self._mask_offsets[index], self._mask_offsets[index + 1]
            item["masked_lm_positions"] = self._positions[m0:m1]
            item["masked_lm_ids"] = self._replacements[m0:m1]
        return item

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())
