"""LLM decoders (issue 11): slime_core.models.llm against HF transformers (test-only
reference) on tiny random configurations saved in HF's real on-disk layouts: logits within
1e-4 relative in float32, identical greedy tokens from cached generation, batched with left
padding; the checkpoint paths (sharded index, tied embeddings, strict errors) and sampling.
Run with -s to see the parity table (PARITY lines)."""
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers.generation.logits_process import TopPLogitsWarper  # noqa: E402

from slime_core.checkpoint import (INDEX_FILE, SINGLE_FILE, CheckpointError,  # noqa: E402
                                   MappedSafetensors, save_safetensors_folder)
from slime_core.models.llm import Decoder, DecoderConfig, KVCache, top_p_filter  # noqa: E402

T = transformers
VOCAB = 151  # odd, so no size happens to line up with another

# Tiny random configurations per family; each is saved by HF and loaded by us.
CASES = {
    "llama": lambda: T.LlamaConfig(
        hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, rms_norm_eps=1e-5),
    # Llama-3.1 rope scaling with a short original context so that it changes the
    # frequencies at these lengths; attention and MLP biases on.
    "llama3": lambda: T.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, vocab_size=VOCAB, rope_theta=500000.0, attention_bias=True,
        mlp_bias=True, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 16}),
    "llama_linear": lambda: T.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=VOCAB,
        rope_scaling={"rope_type": "linear", "factor": 2.0}),
    # Tied embeddings as in Qwen2-0.5B; saved in shards with an index.
    "qwen2": lambda: T.Qwen2Config(
        hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=True),
    # Phi-2's shape: parallel attention and MLP, partial rotary 0.4, gelu_new, biases.
    "phi": lambda: T.PhiConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=VOCAB, partial_rotary_factor=0.4, hidden_act="gelu_new"),
    "phi_qk_layernorm": lambda: T.PhiConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, partial_rotary_factor=0.5, qk_layernorm=True),
    # StableLM-2 1.6B's shape: LayerNorm, partial rotary 0.25, q/k/v biases.
    "stablelm": lambda: T.StableLmConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, use_qkv_bias=True, partial_rotary_factor=0.25),
    "stablelm_parallel_qk_layernorm": lambda: T.StableLmConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=VOCAB, use_parallel_residual=True, qk_layernorm=True,
        partial_rotary_factor=0.5),
}
SHARDED = {"qwen2"}
PARITY_CASES = ["llama", "llama3", "qwen2", "phi", "stablelm"]


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """case -> (HF model in float32, eager attention; the folder HF saved it to)."""
    built = {}

    def get(case):
        if case not in built:
            cfg = CASES[case]()
            cfg._attn_implementation = "eager"  # the plain path: not the SDPA call we make
            hf = T.AutoModelForCausalLM.from_config(cfg).eval()
            with torch.no_grad():  # spread the weights so logits are far from uniform
                for p in hf.parameters():
                    p.add_(torch.randn_like(p) * 0.2)
            folder = str(tmp_path_factory.mktemp(case))
            hf.save_pretrained(folder, max_shard_size="20KB" if case in SHARDED else "5GB")
            built[case] = hf, folder
        return built[case]
    return get


def padded_batch(lengths, total, left):
    """Random ids (B, total) and their mask for rows of the given real lengths."""
    ids = torch.randint(0, VOCAB, (len(lengths), total))
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, total - n:] = 1
        else:
            mask[i, :n] = 1
    return ids, mask


def positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_hf(saved, case):
    hf, folder = saved(case)
    ours = Decoder.from_pretrained(folder)
    assert ours.lm_head.weight.dtype == torch.float32
    worst = 0.0
    with torch.no_grad():
        ids = torch.randint(0, VOCAB, (2, 13))
        worst = max(worst, rel_err(ours(ids), hf(ids).logits))
        for left in (False, True):
            ids, mask = padded_batch([11, 4, 1, 11], 11, left)
            pos = positions(mask)
            a = ours(ids, attention_mask=mask)
            b = hf(ids, attention_mask=mask, position_ids=pos).logits
            real = mask.bool()
            assert torch.isfinite(a).all()  # padded positions too
            worst = max(worst, rel_err(a[real], b[real]))
    print(f"PARITY {case} max relative logit error float32 {worst:.2e}")
    assert worst <= 1e-4


@pytest.mark.parametrize("case", ["llama3", "phi", "stablelm"])
def test_inputs_embeds_path_equals_input_ids_path(saved, case):
    ours = Decoder.from_pretrained(saved(case)[1])
    ids, mask = padded_batch([7, 3, 9], 9, left=True)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)
        b = ours(inputs_embeds=ours.embed_tokens(ids), attention_mask=mask)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", PARITY_CASES)
def test_cached_decoding_equals_full_forward(saved, case):
    ours = Decoder.from_pretrained(saved(case)[1])
    ids, mask = padded_batch([12, 5, 9], 12, left=True)
    with torch.no_grad():
        full = ours(ids, attention_mask=mask)
        cache = ours.new_cache(3, 12)
        steps = [ours(ids[:, :6], attention_mask=mask[:, :6], cache=cache)]
        steps.append(ours(ids[:, 6:8], attention_mask=mask[:, :8], cache=cache))  # a chunk
        for t in range(8, 12):
            steps.append(ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache))
    assert cache.length == 12
    real = mask.bool()
    assert rel_err(torch.cat(steps, 1)[real], full[real]) <= 1e-5
    with torch.no_grad():  # without a mask, the cache still applies causality per chunk
        cache = ours.new_cache(3, 12)
        chunks = [ours(ids[:, :5], cache=cache), ours(ids[:, 5:9], cache=cache),
                  ours(ids[:, 9:], cache=cache)]
        assert rel_err(torch.cat(chunks, 1), ours(ids)) <= 1e-5


@pytest.mark.parametrize("case", PARITY_CASES)
def test_greedy_generation_matches_hf(saved, case):
    hf, folder = saved(case)
    ours = Decoder.from_pretrained(folder)
    ids, mask = padded_batch([7, 2, 5, 7], 7, left=True)
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = hf.generate(ids, eos_token_id=None, **kw)[:, 7:]
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=10, stop_token_ids=[],
                        pad_token_id=0)
    equal = torch.equal(got, ref)
    # A stop token that row 0 produces at step 3: that row ends there, the others go on.
    stop = int(ref[0, 3])
    with torch.no_grad():
        ref_stop = hf.generate(ids, eos_token_id=stop, **kw)[:, 7:]
    got_stop = ours.generate(ids, attention_mask=mask, max_new_tokens=10,
                             stop_token_ids=[stop], pad_token_id=0)
    # Unpadded prompts take the mask-free path.
    with torch.no_grad():
        ref_full = hf.generate(ids, **{**kw, "attention_mask": torch.ones_like(mask)},
                               eos_token_id=None)[:, 7:]
    got_full = ours.generate(ids, max_new_tokens=10, stop_token_ids=[])
    equal = equal and torch.equal(got_stop, ref_stop) and torch.equal(got_full, ref_full)
    print(f"PARITY {case} greedy tokens equal {equal}")
    assert equal
    first = (got_stop[0] == stop).nonzero()[0, 0]
    assert (got_stop[0, first + 1:] == 0).all()


def test_generate_from_inputs_embeds_equals_from_ids(saved):
    ours = Decoder.from_pretrained(saved("stablelm")[1])
    ids, mask = padded_batch([6, 3], 6, left=True)
    a = ours.generate(ids, attention_mask=mask, max_new_tokens=6, stop_token_ids=[])
    with torch.no_grad():
        emb = ours.embed_tokens(ids)
    b = ours.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=6,
                      stop_token_ids=[])
    assert a.shape == (2, 6) and torch.equal(a, b)


def test_sampling_top_p_stop_tokens_and_max_new_tokens(saved):
    ours = Decoder.from_pretrained(saved("llama")[1])
    ids, mask = padded_batch([5, 8, 3], 8, left=True)
    kw = dict(attention_mask=mask, max_new_tokens=9, do_sample=True, temperature=0.8,
              top_p=0.6, stop_token_ids=[])
    a = ours.generate(ids, generator=torch.Generator().manual_seed(1), **kw)
    b = ours.generate(ids, generator=torch.Generator().manual_seed(1), **kw)
    assert a.shape == (3, 9) and torch.equal(a, b)
    # Every sampled token lies in the top-p nucleus of its step's distribution, recomputed
    # here from full forwards and HF's top-p warper.
    warp = TopPLogitsWarper(top_p=0.6)
    seq, m = ids, mask
    with torch.no_grad():
        for t in range(9):
            logits = ours(seq, attention_mask=m)[:, -1] / 0.8
            allowed = torch.isfinite(warp(seq, logits.clone()))
            assert allowed.gather(1, a[:, t:t + 1]).all()
            seq, m = torch.cat((seq, a[:, t:t + 1]), 1), torch.cat((m, m[:, :1] * 0 + 1), 1)
    # Near-zero temperature is greedy.
    cold = ours.generate(ids, attention_mask=mask, max_new_tokens=9, do_sample=True,
                         temperature=1e-6, stop_token_ids=[],
                         generator=torch.Generator().manual_seed(2))
    assert torch.equal(cold, ours.generate(ids, attention_mask=mask, max_new_tokens=9,
                                           stop_token_ids=[]))
    # Stopping on every token ends each row after one token: one step only.
    every = ours.generate(ids, attention_mask=mask, max_new_tokens=9, do_sample=True,
                          stop_token_ids=list(range(VOCAB)), pad_token_id=7,
                          generator=torch.Generator().manual_seed(3))
    assert every.shape == (3, 1)
    # Stop tokens end rows independently; ended rows are padded.
    stop = int(a[1, 2])
    pad = (stop + 1) % VOCAB
    s = ours.generate(ids, generator=torch.Generator().manual_seed(1), pad_token_id=pad,
                      **{**kw, "stop_token_ids": [stop]})
    for row in s:
        hits = (row == stop).nonzero()
        if len(hits):
            assert (row[hits[0, 0] + 1:] == pad).all()
    assert (s[1] == stop).any()
    with pytest.raises(ValueError, match="pad_token_id"):
        ours.generate(ids, pad_token_id=VOCAB)


def test_top_p_filter_matches_hf_warper():
    for top_p in (0.0, 0.3, 0.9, 0.999, 1.0):
        logits = torch.randn(5, 37) * 3
        ref = TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1)(None, logits.clone())
        got = top_p_filter(logits, top_p)
        assert torch.equal(torch.isfinite(got), torch.isfinite(ref)), top_p
        assert torch.equal(got[torch.isfinite(got)], logits[torch.isfinite(got)])


def test_generate_edge_cases(saved):
    ours = Decoder.from_pretrained(saved("phi")[1])
    ids = torch.randint(0, VOCAB, (2, 4))
    assert ours.generate(ids, max_new_tokens=0).shape == (2, 0)
    one = ours.generate(ids[:1, :1], max_new_tokens=3, stop_token_ids=[])
    assert one.shape == (1, 3)
    with torch.no_grad():  # a one-token prompt's first token is the argmax of its logits
        assert int(one[0, 0]) == int(ours(ids[:1, :1])[0, -1].argmax())
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="left padding"):
        ours.generate(ids, attention_mask=right)
    with pytest.raises(ValueError, match="at least one token"):
        ours.generate(ids[:, :0])
    with pytest.raises(ValueError, match="temperature"):
        ours.generate(ids, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="exactly one"):
        ours(ids, inputs_embeds=ours.embed_tokens(ids))
    with pytest.raises(TypeError, match="inputs_embeds must have the model's dtype"):
        ours(inputs_embeds=ours.embed_tokens(ids).double())
    with pytest.raises(ValueError, match="inputs_embeds must be"):
        ours(inputs_embeds=torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        ours(ids, attention_mask=torch.ones(2, 5))
    cache = ours.new_cache(2, 4)
    with pytest.raises(ValueError, match="cache"):
        ours(torch.randint(0, VOCAB, (2, 5)), cache=cache)


def test_generation_config_sets_the_default_stop_tokens(saved, tmp_path):
    hf, _ = saved("llama")
    hf.save_pretrained(str(tmp_path))
    with open(tmp_path / "generation_config.json", "w") as f:
        json.dump({"eos_token_id": [5, 9], "pad_token_id": 3}, f)
    ours = Decoder.from_pretrained(str(tmp_path))
    assert ours.config.eos_token_id == [5, 9] and ours.config.pad_token_id == 3
    ids = torch.randint(0, VOCAB, (2, 4))
    free = ours.generate(ids, max_new_tokens=6, stop_token_ids=[])
    ours.config.eos_token_id = [int(free[0, 1])]
    stopped = ours.generate(ids, max_new_tokens=6)  # stops on the config's token by default
    first = int((stopped[0] == int(free[0, 1])).nonzero()[0, 0])
    assert (stopped[0, first + 1:] == 3).all()


def test_sharded_folder_and_tied_embeddings(saved):
    hf, folder = saved("qwen2")
    index = json.load(open(os.path.join(folder, INDEX_FILE)))
    assert len(set(index["weight_map"].values())) >= 2
    assert "lm_head.weight" not in index["weight_map"]  # HF omits the tied copy
    ours = Decoder.from_pretrained(folder)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight


@pytest.mark.parametrize("case", ["llama3", "qwen2", "phi", "stablelm_parallel_qk_layernorm"])
def test_save_pretrained_round_trip_through_hf(saved, case, tmp_path):
    hf, folder = saved(case)
    ours = Decoder.from_pretrained(folder)
    ours.save_pretrained(str(tmp_path / "one"))
    ours.save_pretrained(str(tmp_path / "sharded"), max_shard_bytes=30_000)
    assert os.path.isfile(tmp_path / "one" / SINGLE_FILE)
    assert os.path.isfile(tmp_path / "sharded" / INDEX_FILE)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        want = ours(ids)
        for sub in ("one", "sharded"):
            back = T.AutoModelForCausalLM.from_pretrained(str(tmp_path / sub)).eval()
            assert rel_err(back(ids).logits, want) <= 1e-6
            again = Decoder.from_pretrained(str(tmp_path / sub))
            assert torch.equal(again(ids), want)
    # Saving unsharded over the sharded folder removes the stale index and shards.
    ours.save_pretrained(str(tmp_path / "sharded"))
    assert sorted(os.listdir(tmp_path / "sharded")) == ["config.json", SINGLE_FILE]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loads_and_runs(saved, dtype, tmp_path):
    hf, folder = saved("llama3")
    ref = Decoder.from_pretrained(folder)
    ours = Decoder.from_pretrained(folder, dtype=dtype)  # converted from the float32 file
    assert all(p.dtype == dtype for p in ours.parameters())
    ids, mask = padded_batch([8, 5], 8, left=True)
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask), ref(ids, attention_mask=mask)
    assert a.dtype == dtype and torch.isfinite(a).all()
    assert rel_err(a[mask.bool()], b[mask.bool()]) < 5e-2
    assert ours.generate(ids, attention_mask=mask, max_new_tokens=4).shape[0] == 2
    # A half-precision save loads back bit for bit, in the file's dtype by default.
    ours.save_pretrained(str(tmp_path))
    back = Decoder.from_pretrained(str(tmp_path))
    assert back.lm_head.weight.dtype == dtype
    for (k, p), q in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(p, q), k


def test_loaded_parameters_are_copy_on_write_views_of_the_file(saved, tmp_path):
    _, folder = saved("llama")
    ours = Decoder.from_pretrained(folder)
    before = load_file(os.path.join(folder, SINGLE_FILE))
    with torch.no_grad():
        ours.lm_head.weight.add_(1.0)  # writes to the private mapping only
    after = load_file(os.path.join(folder, SINGLE_FILE))
    assert torch.equal(before["lm_head.weight"], after["lm_head.weight"])
    torch.testing.assert_close(ours.lm_head.weight, before["lm_head.weight"] + 1, rtol=0, atol=0)
    ckpt = MappedSafetensors(folder)
    v1, v2 = ckpt.get("lm_head.weight"), ckpt.get("lm_head.weight")
    assert v1.data_ptr() == v2.data_ptr()  # views, not reads
    converted = ckpt.take("lm_head.weight", torch.bfloat16)
    assert converted.dtype == torch.bfloat16
    torch.testing.assert_close(ckpt.get("lm_head.weight"), before["lm_head.weight"],
                               rtol=0, atol=0)  # released pages come back from disk


def rewrite(folder, edit):
    path = os.path.join(folder, SINGLE_FILE)
    sd = load_file(path)
    edit(sd)
    save_file(sd, path, metadata={"format": "pt"})


def test_missing_unexpected_and_misshapen_keys_are_named(saved, tmp_path):
    hf, _ = saved("llama")
    folder = str(tmp_path)
    hf.save_pretrained(folder)
    rewrite(folder, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys \['model.layers.1.mlp.up_proj"):
        Decoder.from_pretrained(folder)
    hf.save_pretrained(folder)
    rewrite(folder, lambda sd: sd.__setitem__("model.layers.0.self_attn.k_proj.weight",
                                              torch.zeros(24, 47)))
    with pytest.raises(CheckpointError) as e:
        Decoder.from_pretrained(folder)
    assert ("model.layers.0.self_attn.k_proj.weight: checkpoint (24, 47), model (24, 48)"
            in str(e.value))
    hf.save_pretrained(folder)
    rewrite(folder, lambda sd: sd.__setitem__("model.extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unexpected keys \['model.extra.weight'\]"):
        Decoder.from_pretrained(folder)
    assert Decoder.from_pretrained(folder, strict=False) is not None
    # An old-style recomputed rope buffer is not an unexpected key.
    hf.save_pretrained(folder)
    rewrite(folder, lambda sd: sd.__setitem__("model.layers.0.self_attn.rotary_emb.inv_freq",
                                              torch.zeros(6)))
    Decoder.from_pretrained(folder)


def test_tied_checkpoint_with_a_different_lm_head_is_refused(saved, tmp_path):
    hf, _ = saved("qwen2")
    hf.save_pretrained(str(tmp_path))
    rewrite(str(tmp_path), lambda sd: sd.__setitem__(
        "lm_head.weight", torch.randn_like(sd["model.embed_tokens.weight"])))
    with pytest.raises(CheckpointError, match="tie_word_embeddings"):
        Decoder.from_pretrained(str(tmp_path))
    rewrite(str(tmp_path), lambda sd: sd.__setitem__(
        "lm_head.weight", sd["model.embed_tokens.weight"].clone()))
    assert Decoder.from_pretrained(str(tmp_path)).lm_head.weight.shape == (VOCAB, 48)


def test_unsupported_configurations_are_refused():
    base = CASES["llama"]().to_dict()
    with pytest.raises(ValueError, match="model_type 'mistral' is not supported"):
        DecoderConfig.from_hf_config({**base, "model_type": "mistral"})
    with pytest.raises(ValueError, match="rope scaling type 'yarn'"):
        DecoderConfig.from_hf_config({**base, "rope_parameters": None,
                                      "rope_scaling": {"type": "yarn", "factor": 2.0}})
    qwen = CASES["qwen2"]().to_dict()
    with pytest.raises(ValueError, match="sliding-window"):
        DecoderConfig.from_hf_config({**qwen, "use_sliding_window": True})
    with pytest.raises(ValueError, match="num_kv_heads"):
        DecoderConfig(hidden_size=64, num_heads=4, num_kv_heads=3)
    with pytest.raises(TypeError, match="DecoderConfig"):
        Decoder(base)


def test_transformers4_config_layout():
    # Top-level rope_theta / rope_scaling with "type" / partial_rotary_factor, and Phi-2's
    # num_key_value_heads null, as in the released config.json files.
    old = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "max_position_embeddings": 131072, "eos_token_id": [128001, 128008, 128009],
           "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    cfg = DecoderConfig.from_hf_config(old)
    assert (cfg.rope_theta, cfg.num_kv_heads, cfg.head_dim) == (500000.0, 8, 128)
    assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.eos_token_id[-1] == 128009
    phi2 = {"model_type": "phi", "vocab_size": 51200, "hidden_size": 2560,
            "intermediate_size": 10240, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": None, "partial_rotary_factor": 0.4, "rope_theta": 10000.0,
            "rope_scaling": None, "layer_norm_eps": 1e-5, "hidden_act": "gelu_new",
            "qk_layernorm": False, "tie_word_embeddings": False}
    cfg = DecoderConfig.from_hf_config(phi2)
    assert (cfg.num_kv_heads, cfg.rotary_dim, cfg.parallel_residual) == (32, 32, True)
    vicuna = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
              "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "rope_scaling": {"type": "linear", "factor": 4.0}, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 16384}
    cfg = DecoderConfig.from_hf_config(vicuna)
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    with torch.device("meta"):  # the 8B layout builds; no memory is touched
        model = Decoder(DecoderConfig.from_hf_config(old))
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248


def test_mapped_safetensors_rejects_corrupt_files(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.arange(6.0).view(2, 3)}, str(good))
    assert torch.equal(MappedSafetensors(str(good)).get("a"), torch.arange(6.0).view(2, 3))
    raw = good.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(raw[:-4])
    with pytest.raises(CheckpointError, match="data offsets"):
        MappedSafetensors(str(tmp_path / "short.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        MappedSafetensors(str(tmp_path / "junk.safetensors"))
    n = int.from_bytes(raw[:8], "little")
    (tmp_path / "json.safetensors").write_bytes(raw[:8] + b"{" * n + raw[8 + n:])
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        MappedSafetensors(str(tmp_path / "json.safetensors"))
    header = json.dumps({"a": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]}})
    header = header.ljust(n).encode()[:n] if len(header) <= n else header.encode()
    bad = len(header).to_bytes(8, "little") + header + raw[8 + n:]
    (tmp_path / "shape.safetensors").write_bytes(bad)
    with pytest.raises(CheckpointError, match="malformed shape"):
        MappedSafetensors(str(tmp_path / "shape.safetensors"))


def test_save_safetensors_folder_shards_and_empty_tensors(tmp_path):
    sd = {"a": torch.randn(300), "b": torch.randn(5, 7), "c": torch.zeros(0, 4),
          "d": torch.randn(2000)}
    names = save_safetensors_folder(sd, str(tmp_path), max_shard_bytes=2000)
    assert names[-1] == INDEX_FILE and len(names) == 3
    index = json.load(open(tmp_path / INDEX_FILE))
    assert index["weight_map"]["a"] == index["weight_map"]["c"] != index["weight_map"]["d"]
    ckpt = MappedSafetensors(str(tmp_path))
    assert sorted(ckpt.keys()) == ["a", "b", "c", "d"]
    for k, t in sd.items():
        assert torch.equal(ckpt.get(k), t)
    with pytest.raises(CheckpointError, match="has no tensor 'e'"):
        ckpt.get("e")
    with pytest.raises(ValueError, match="max_shard_bytes"):
        save_safetensors_folder(sd, str(tmp_path), max_shard_bytes=0)


def test_kv_cache_layout():
    cfg = DecoderConfig(vocab_size=11, hidden_size=24, intermediate_size=8, num_layers=3,
                        num_heads=6, num_kv_heads=2)
    cache = KVCache(cfg, batch=2, max_len=5)
    assert len(cache.k) == 3 and cache.k[0].shape == (2, 2, 5, 4) and cache.length == 0


@pytest.mark.parametrize("case", ["llama3", "phi", "stablelm"])
def test_gradients_match_hf(saved, case):
    # Training goes through the same forward: the loss over real tokens of a right-padded
    # batch back-propagates to the same parameter gradients as HF's.
    hf, folder = saved(case)
    ours = Decoder.from_pretrained(folder)
    assert all(p.requires_grad for p in ours.parameters())
    ids, mask = padded_batch([9, 4, 6], 9, left=False)
    targets = torch.randint(0, VOCAB, ids.shape).masked_fill(mask == 0, -100)

    def loss(logits):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1),
                                                 ignore_index=-100)
    loss(ours(ids, attention_mask=mask.bool())).backward()
    hf.zero_grad()
    loss(hf(ids, attention_mask=mask).logits).backward()
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert rel_err(p.grad, theirs[name].grad) <= 1e-4, name
    hf.zero_grad()


def test_load_into_copies_and_names_problems():
    from slime_core.checkpoint import load_into
    lin = torch.nn.Linear(3, 2).to(torch.bfloat16)
    sd = {"weight": torch.randn(2, 3), "bias": torch.randn(2)}
    load_into(lin, sd)  # copied and cast to the module's dtype
    assert lin.weight.dtype == torch.bfloat16
    torch.testing.assert_close(lin.weight, sd["weight"].bfloat16(), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"weight: checkpoint \(3, 2\), model \(2, 3\)"):
        load_into(lin, {"weight": torch.randn(3, 2), "bias": torch.randn(2)})
    with pytest.raises(CheckpointError, match=r"missing keys \['bias'\]"):
        load_into(lin, {"weight": torch.randn(2, 3)})
