import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """The tiny models are far faster on one thread (and the golden file was made on one)."""
    monkeypatch.setenv("THRESHER_NO_PROGRESS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
