"""The fingerprints a discovery run works on: one layout's valid rows of a time window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast.layout import Layout
from attnfast.store import FingerprintStore


@dataclass(frozen=True)
class Window:
    """Rows of the window, in store order (a request's rows together, in step order)."""

    since_us: int
    until_us: int
    ids: NDArray[np.int64]
    request_id: list[str]
    step: NDArray[np.int64]
    token_text: list[str | None]
    think_phase: list[str | None]
    fingerprints: NDArray[np.float32]
    #: Rows of the window left out: flagged invalid, or of another layout.
    skipped_invalid: int
    skipped_other_layout: int

    def __len__(self) -> int:
        return len(self.ids)


def read_window(store: FingerprintStore, since_us: int, until_us: int, layout: Layout) -> Window:
    """Reads ``[since_us, until_us)``: rows of ``layout`` that are not flagged invalid (their
    vectors break the layout's rules, so no zone or cluster means anything for them)."""
    cols: dict[str, Any] = store.read(
        since=since_us / 1e6, until=until_us / 1e6, layout=layout, format="numpy"
    )
    everything = store.count(since=since_us / 1e6, until=until_us / 1e6)
    valid = ~np.asarray(cols["invalid"], dtype=bool)
    keep = np.flatnonzero(valid)
    take = keep.tolist()
    return Window(
        since_us=since_us,
        until_us=until_us,
        ids=np.asarray(cols["id"], dtype=np.int64)[keep],
        request_id=[cols["request_id"][i] for i in take],
        step=np.asarray(cols["step"], dtype=np.int64)[keep],
        token_text=[cols["token_text"][i] for i in take],
        think_phase=[cols["think_phase"][i] for i in take],
        fingerprints=np.ascontiguousarray(cols["fingerprint"][keep], dtype=np.float32),
        skipped_invalid=int((~valid).sum()),
        skipped_other_layout=int(everything - len(valid)),
    )
