"""What each member of a pack trains and is scored on: a split, its repeats, or its folds.

A trial is one member, or `data.members` of them (`regsearch.folds`): slot s of the pack
holds members s*g .. s*g+g-1, member j of a trial being fold (or repeat) j. Every member
sees the same batches. With folds the batches are drawn from every row but the test split,
each member masked off its own fold's rows, and the rows arrive raw: each member
standardizes them with its fold's training statistics inside the model.
"""

from __future__ import annotations

import numpy as np

from regsearch.data import Dataset
from regsearch.folds import View


class MemberData:
    """The rows the pack trains on, and each member's masks, validation rows and scales."""

    def __init__(self, data: Dataset, pack_size: int) -> None:
        self.group = data.members
        self.members = pack_size * self.group
        self.views: list[View] = data.views()
        self.folds = bool(data.folds)
        if not self.folds:
            self.x_train = np.asarray(data.x_train, np.float32)
            self.y_train = np.asarray(data.y_train)
            self.masks: np.ndarray | None = None
            self.x_val = np.asarray(data.x_val, np.float32)
            self.x_test = np.asarray(data.x_test, np.float32)
            self.val_rows = [len(data.x_val)] * self.group
            return
        assert data.x_raw is not None and data.y_raw is not None
        pool = np.unique(np.concatenate([f.train_rows for f in data.folds] +
                                        [f.val_rows for f in data.folds]))
        self.pool = pool  # the data set's rows the pack trains on, in `x_train`'s order
        self.x_train = data.x_raw[pool].astype(np.float32)
        self.y_train = data.y_raw[pool].astype(np.float32 if data.task == "regression"
                                                else np.int64)
        trains_on = np.stack([np.isin(pool, f.train_rows) for f in data.folds], axis=1)
        self.masks = np.tile(trains_on, pack_size).astype(np.float32)  # (rows, members)
        self.val_rows = [len(f.val_rows) for f in data.folds]
        width = max(self.val_rows)
        per_fold = np.zeros((self.group, width, data.n_features), np.float32)
        for j, fold in enumerate(data.folds):
            per_fold[j, :len(fold.val_rows)] = data.x_raw[fold.val_rows]
        self.x_val = np.tile(per_fold, (pack_size, 1, 1))  # (members, rows, features)
        self.x_test = data.x_raw[data.test_rows].astype(np.float32)

    def member(self, slot: int, j: int = 0) -> int:
        return slot * self.group + j

    def of_slot(self, slot: int) -> list[int]:
        return [self.member(slot, j) for j in range(self.group)]

    def view(self, member: int) -> View:
        return self.views[member % self.group]

    def validation(self, outputs: np.ndarray, member: int) -> np.ndarray:
        """A member's validation outputs, from the pack's (members, rows, out)."""
        return outputs[member][:self.val_rows[member % self.group]]

    def scales(self, member: int) -> dict[str, np.ndarray | float]:
        """The member's standardization (folds), as `PackedNet`'s per-member variables."""
        view = self.view(member)
        return {"shift": view.feature_mean, "scale": 1.0 / view.feature_std,
                "target_shift": view.target_mean, "target_scale": 1.0 / view.target_std}
