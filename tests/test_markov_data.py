"""builtin:markov, the low-noise synthetic task: deterministic walks of a fixed chain, usable from a preset."""

from __future__ import annotations

import itertools
from collections import Counter

from tests.conftest import tiny_preset_dict
from tui_tuner.preset import Preset
from tui_tuner.training import data as D


def test_walks_follow_the_fixed_chain_with_its_probabilities() -> None:
    rows = D.markov(500, seed=3)
    assert rows == D.markov(500, seed=3) and rows != D.markov(500, seed=4)
    chain = D.markov_chain()
    ranks: Counter[int] = Counter()
    for row in rows:
        assert row["prompt"][-1] == ":" and len(row["completion"]) == 24
        walk = row["prompt"][0] + row["completion"]
        for a, b in itertools.pairwise(walk):
            assert b in chain[a]
            ranks[chain[a].index(b)] += 1
    total = sum(ranks.values())
    for rank, p in enumerate(D.MARKOV_PROBS):
        assert abs(ranks[rank] / total - p) < 0.02


def test_a_preset_can_name_it_and_it_tokenises_within_32() -> None:
    from tui_tuner.training.finetune import prepare_data

    preset = Preset.from_dict(tiny_preset_dict(data={"train": "builtin:markov", "max_length": 32,
                                                     "eval_fraction": 0.2}))
    assert len(D.load_records("builtin:markov")) == 4000
    _, bundle = prepare_data(preset.model.name, preset.data)
    assert (len(bundle.train), len(bundle.eval)) == (3200, 800)
    assert max(len(e.ids) for e in bundle.train) <= 32  # prompt 2 + 24 letters + EOS: nothing cut
