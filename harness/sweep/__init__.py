"""`harness sweep`: the driver (`driver`: variants side by side), their Tune experiments
(`experiment`) and the callback that records trials (`callback`), one trial as a worker runs it (`trial`, no Ray), the driver's Ray (`ray_node`) and the arrays a node's trials
share (`shared_data`), the live progress table (`progress`) and the Ray results folder
(`storage`). Only `driver`, `experiment`, `callback` and `ray_node` import Ray.

The Tune settings below are set before any of them imports Ray.
"""

import os

# Save experiment state often: a killed driver loses at most this many seconds of bookkeeping.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# A trial reports progress saves (harness.protocol.checkpoint) that carry no objective; Tune would
# otherwise refuse every report without it.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
