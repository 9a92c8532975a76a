"""Run by tests/test_distributed.py under torchrun: trains the tiny super-network for 4 sandwich steps and saves
this process's weights, so the test can check that every process ends with the same ones."""
import copy
import sys
from pathlib import Path

import torch
from torch import distributed

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_SHAPE  # noqa: E402
from test_supernet import TINY_SPACE, _token_dataset  # noqa: E402

from eftnas_hw.elastic import ElasticBert  # noqa: E402
from eftnas_hw.models import load_tokenizer, random_bert  # noqa: E402
from eftnas_hw.settings import SupernetSettings  # noqa: E402
from eftnas_hw.supernet import fit_supernet  # noqa: E402

out = Path(sys.argv[1])
teacher = random_bert(TINY_SHAPE, seed=11)
supernet = ElasticBert(copy.deepcopy(teacher))
settings = SupernetSettings(max_steps=4, batch_size=4, lr=1e-3, num_random=1, logging_steps=100)
fit_supernet(supernet, teacher, TINY_SPACE, _token_dataset(32), load_tokenizer(None), out / "work", settings,
             seed=3, is_regression=False, resume=False)
torch.save(supernet.model.state_dict(), out / f"rank{distributed.get_rank()}.pt")
