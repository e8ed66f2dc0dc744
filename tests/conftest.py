import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    """One intra-op thread: tiny models gain nothing from two, and on shared cores a second
    OpenMP thread turns every barrier into a scheduler wait. Real-model tests override this."""
    torch.set_num_threads(1)
