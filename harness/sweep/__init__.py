"""`harness sweep`: the driver (`driver`: Tune experiments, their callbacks), one trial as a
worker runs it (`trial`, no Ray), the driver's Ray (`ray_node`) and the arrays a node's trials
share (`shared_data`), the live progress table (`progress`) and the Ray results folder
(`storage`). Only `driver` and `ray_node` import Ray."""
