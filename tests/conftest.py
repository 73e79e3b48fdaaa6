import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def hf_llama(tmp_path_factory):
    from tests.helpers import make_hf_llama

    return make_hf_llama(tmp_path_factory.mktemp("hf") / "llama")


@pytest.fixture(scope="session")
def hf_llama_tied(tmp_path_factory):
    from tests.helpers import make_hf_llama

    return make_hf_llama(tmp_path_factory.mktemp("hf") / "llama_tied", tied=True, seed=1)
