import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    """One intra-op thread: tiny models gain nothing from two, and on shared cores a second
    OpenMP thread turns every barrier into a scheduler wait. Real-model tests override this."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def target():
    """The tiny target of the SSD tests (ssd_support: a context long enough for full trees);
    modules with other models define their own."""
    from ssd_support import tiny_model

    return tiny_model(0)


@pytest.fixture(scope="module")
def draft():
    from ssd_support import tiny_model

    return tiny_model(1)


@pytest.fixture(scope="module")
def pair8():
    """The tiny SSD pair with an 8-token vocabulary: small enough to enumerate the exact
    distribution of several tokens (the statistical exactness tests)."""
    from ssd_support import tiny_model

    return tiny_model(0, vocab=8), tiny_model(1, vocab=8)
