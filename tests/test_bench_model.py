"""bench/bench_model.py at toy widths: the staged chain of ours is SlimeModel's own path (the
same spliced input and first token as SlimeModel.prepare_inputs / generate), both chains
agree, and the rows come out complete. Timings are not asserted (benchmarks, not tests)."""
import pytest
import torch

import slime_core  # noqa: F401
from slime_core.models.slime import trim_left_padding

pytest.importorskip("transformers")
from bench import bench_model as B  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    return B.build(B.TOY)


def test_staged_chain_is_slime_models_path(pair):
    ours = B.run_chain(B.ours_stages(pair))
    out = ours["out"]
    ids = pair.input_ids
    with torch.no_grad():
        spliced = pair.model.prepare_inputs(ids, torch.ones_like(ids), out.pixel_values,
                                            out.crops_per_image, out.grids_wh, padding_side="left")
        x, mask = trim_left_padding(spliced.inputs_embeds, spliced.attention_mask)
        logits = pair.model.llm(inputs_embeds=x, attention_mask=mask)[0, -1]
        first = pair.model.generate(ids, torch.ones_like(ids), out.pixel_values,
                                    out.crops_per_image, out.grids_wh, max_new_tokens=1)
    assert torch.equal(ours["x"], x) and bool(mask.all())
    # The toy selection drops tokens, so the fixed-shape splice had padding to trim.
    assert ours["padded_length"] > x.shape[1]
    assert torch.allclose(ours["logits"], logits, rtol=1e-5, atol=1e-5)
    assert int(first[0, 0]) == int(ours["logits"].argmax())


def test_peer_chain_agrees_and_rows_are_complete(pair, monkeypatch):
    monkeypatch.setattr(B, "build", lambda w: pair)
    rows = B.model_rows("cpu", w=B.TOY, big_reps=1, small_reps=1)
    assert [r.op for r in rows] == [f"SliME forward: {s}" for s in B.STAGES] + [
        "SliME forward: total"]
    assert all(r.ours.median > 0 and r.baseline.median > 0 for r in rows)
    total = rows[-1]
    assert abs(total.ours.median - sum(r.ours.median for r in rows[:-1])) < 1e-9
    assert "same argmax" in rows[len(B.STAGES) - 1].note


def test_released_splice_puts_the_image_at_the_placeholder():
    embed = torch.nn.Embedding(10, 3)
    ids = torch.tensor([[1, 4, B.IMAGE_TOKEN_INDEX, 7]])
    image = torch.randn(1, 5, 3)
    x, mask, pos = B.llava_splice(ids, embed, image)
    with torch.no_grad():
        want = torch.cat([embed(ids[0, :2]), image[0], embed(ids[0, 3:])])
    assert torch.equal(x[0], want) and bool(mask.all()) and pos[0].tolist() == list(range(8))


def test_generation_rows_match_hf_tokens():
    rows = B.generation_rows("cpu", quick=True, prompt=5, new=4, hidden=32, layers=2, heads=4,
                             vocab=64)
    assert len(rows) == 1 and "tokens identical" in rows[0].note
