import pytest
import torch

# One intra-op thread: CI has 2 cores, and sweep tests run Ray trials beside pytest; on a
# busy 2-core machine two threads per process measured 10-25x slower than one.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path, monkeypatch):
    """Tests never read or write the user's ~/.cache/harness/data."""
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
