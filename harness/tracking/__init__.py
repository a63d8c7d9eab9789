"""MLflow: writes (`writer`: store checks, the outbox, the Tracker), reads (`reader`: a
sweep's trial runs), and the provenance every run is tagged with (`provenance`). The only
modules that import MLflow."""
