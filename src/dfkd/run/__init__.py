"""One run: assembled once from its settings (:mod:`dfkd.run.builder`), then driven by the
loop of :mod:`dfkd.run.trainer`, with what happens around the loop in
:mod:`dfkd.run.callbacks` (evaluation, the synthetic probe, the health watch, sample grids,
the checkpoint, metrics.jsonl, trackers, the progress bar)."""
