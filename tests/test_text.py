"""Tokenizer and conversation templates (issue 11, item 5).

References we did not write: HF transformers' PreTrainedTokenizerFast on the same folder
(encode, decode, special tokens), and a restatement of the original preprocessing
(tests/llava_text_reference.py: LLaVA/SliME tokenizer_image_token, get_prompt,
preprocess_v1 / preprocess_llama3 / preprocess_plain, TinyLLaVA's phi template) for the ids,
labels and prompts. Conversations are drawn fresh every run.
"""
import json
import os
import random

import pytest

import llava_text_reference as ref
import text_fixtures as fx
from slime_core.text import (IGNORE_INDEX, IMAGE_TOKEN_INDEX, Template, Tokenizer,
                             build_prompt, get_template, register_template, template_names,
                             tokenize_conversation, tokenize_prompt)

transformers = pytest.importorskip("transformers")

# which tokenizer each template is used with, and the original's preprocessing
PAIRS = {
    "vicuna_v1": ("llama", lambda c, hf: ref.preprocess_v1(c, hf, legacy=False)),
    "llama3": ("llama3", ref.preprocess_llama3),
    "phi": ("phi", ref.tinyllava_phi),
}
SAVERS = {"llama": fx.save_llama, "llama3": fx.save_llama3, "phi": fx.save_phi}
END = {"vicuna_v1": "</s>", "llama3": "<|eot_id|>", "phi": "<|endoftext|>", "plain": "\n"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {name: save(str(root / name)) for name, save in SAVERS.items()}


@pytest.fixture(scope="module")
def toks(folders):
    return {name: (Tokenizer.from_folder(f),
                   transformers.PreTrainedTokenizerFast.from_pretrained(f))
            for name, f in folders.items()}


# No "USER:" / "ASSISTANT:" in generated text: the originals find rounds by splitting the
# prompt at those strings (test_separator_inside_a_question shows what happens then).
WORDS = [w for w in " ".join(fx.CORPUS).split() if w not in ("USER:", "ASSISTANT:")] + [
    "é", "漢字", "😀", "naïve", "x", "42", "?!", "user:", "\n"]


def sentence(rng, n=None):
    words = [rng.choice(WORDS) for _ in range(n or rng.randint(1, 9))]
    return " ".join(["car"] + words if words[0] == "\n" else words)  # never blank


def random_text(rng):
    pool = list("abcXYZ019 .,:;!?'\n\t") + ["é", "ß", "漢", "😀", "</s>", "<s>", "<|eot_id|>",
                                             "<|endoftext|>", "<image>", "USER", "  "]
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, 30)))


def conversation(rng, turns, image):
    """image: 'start', 'middle', 'end' or None (where the first question holds <image>)."""
    conv = []
    for t in range(turns):
        q = sentence(rng)
        if t == 0 and image == "start":
            q = "<image>\n" + q
        elif t == 0 and image == "middle":
            q = sentence(rng, 3) + " <image> " + q
        elif t == 0 and image == "end":
            q = q + "\n<image>"
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": sentence(rng)}]
    return conv


def label_runs(labels):
    runs, cur = [], []
    for x in labels + [IGNORE_INDEX]:
        if x != IGNORE_INDEX:
            cur.append(x)
        elif cur:
            runs.append(cur)
            cur = []
    return runs


# ---- Tokenizer against transformers ---------------------------------------------------------
@pytest.mark.parametrize("name", list(SAVERS))
def test_encode_decode_match_transformers(toks, name):
    tok, hf = toks[name]
    rng = random.Random()
    texts = ["", " ", "Hello world", "USER: What</s>USER: x", "<image>\nWhat", "é ü 漢字 😀",
             "\n\n  two  spaces ", *fx.CORPUS[:3]] + [random_text(rng) for _ in range(40)]
    for text in texts:
        assert tok.encode(text) == hf(text).input_ids, text
        assert tok.encode(text, add_special_tokens=False) == \
            hf(text, add_special_tokens=False).input_ids, text
    assert len(tok) == tok.vocab_size == len(hf)
    for name_ in ("bos", "eos", "pad", "unk"):
        assert getattr(tok, f"{name_}_id") == getattr(hf, f"{name_}_token_id"), name_
    for _ in range(40):
        ids = [rng.randrange(len(hf)) for _ in range(rng.randint(0, 25))]
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == \
                hf.decode(ids, skip_special_tokens=skip), (ids, skip)


def test_bos_from_config_and_post_processor_is_not_doubled(toks):
    # The Vicuna-style folder says add_bos_token in its config AND its tokenizer.json's
    # post-processor adds <s>.
    tok, hf = toks["llama"]
    ids = tok.encode("A cat")
    assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]
    assert ids == hf("A cat").input_ids
    assert tok.special_prefix == [tok.bos_id]
    # Llama 3's file: no add_bos_token in the config, the post-processor decides.
    tok3, _ = toks["llama3"]
    assert tok3.special_prefix == [tok3.token_to_id("<|begin_of_text|>")]
    assert toks["phi"][0].special_prefix == []


def drop_post_processor(folder):
    path = os.path.join(folder, "tokenizer.json")
    with open(path) as f:
        spec = json.load(f)
    spec["post_processor"] = None
    with open(path, "w") as f:
        json.dump(spec, f)
    return folder


@pytest.mark.parametrize("has_post_processor", [True, False])
@pytest.mark.parametrize("flags", [dict(add_bos_token=False), dict(add_eos_token=True),
                                   dict(add_bos_token=True, add_eos_token=True)])
def test_config_flags_only_without_post_processor(tmp_path, flags, has_post_processor):
    folder = fx.save_llama(str(tmp_path), **flags)
    tok = Tokenizer.from_folder(drop_post_processor(folder) if not has_post_processor
                                else folder)
    ids = tok.encode("A cat on a sofa", add_special_tokens=False)
    if has_post_processor:
        # tokenizer.json's post-processor decides, whatever the config says (as in
        # transformers 5, for every tokenizer class)
        hf = transformers.PreTrainedTokenizerFast.from_pretrained(folder)
        assert tok.encode("A cat on a sofa") == hf("A cat on a sofa").input_ids == [1] + ids
        assert tok.encode("") == hf("").input_ids == [1]
    else:
        # no post-processor: the config's flags decide (transformers 4's Llama classes; 5
        # ignores them and adds nothing)
        bos = [1] if flags.get("add_bos_token", True) else []  # save_llama's default: true
        eos = [2] if flags.get("add_eos_token", False) else []
        assert tok.encode("A cat on a sofa") == bos + ids + eos
        assert tok.encode("") == bos + eos


def test_tokenizer_json_alone(tmp_path, folders):
    # No config: no named special tokens, the post-processor still adds <s>.
    os.makedirs(tmp_path / "bare")
    with open(os.path.join(folders["llama"], "tokenizer.json")) as f:
        (tmp_path / "bare" / "tokenizer.json").write_text(f.read())
    tok = Tokenizer.from_folder(str(tmp_path / "bare"))
    assert tok.bos_id is None and tok.eos_id is None
    assert tok.encode("A cat")[0] == 1 and tok.encode("A cat", add_special_tokens=False)[0] != 1


def test_truncation_and_padding_in_file_are_not_applied(tmp_path):
    folder = fx.save_llama(str(tmp_path))
    path = os.path.join(folder, "tokenizer.json")
    with open(path) as f:
        spec = json.load(f)
    spec["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst",
                          "stride": 0}
    spec["padding"] = {"strategy": {"Fixed": 40}, "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 0, "pad_type_id": 0, "pad_token": "<unk>"}
    with open(path, "w") as f:
        json.dump(spec, f)
    tok = Tokenizer.from_folder(folder)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(folder)
    text = fx.CORPUS[1]
    assert tok.encode(text) == hf(text).input_ids
    assert tok.special_prefix == [1] and 4 < len(tok.encode(text)) < 40


def test_check_fits(toks):
    for tok, hf in toks.values():
        top = max(hf.get_vocab().values())
        assert tok.max_id == top
        tok.check_fits(top + 1)
        tok.check_fits(top + 64)  # tables padded past the vocabulary are fine
        with pytest.raises(ValueError, match=rf"largest id is {top}.*only {top} rows"):
            tok.check_fits(top)
        with pytest.raises(ValueError, match=r"only 1 rows"):
            tok.check_fits(1)
        with pytest.raises(TypeError, match="num_embeddings"):
            tok.check_fits(float(top + 1))


def test_decode_rejects_sentinels(toks):
    tok, _ = toks["llama"]
    for bad in (IMAGE_TOKEN_INDEX, IGNORE_INDEX, len(tok)):
        with pytest.raises(ValueError, match="cannot be decoded"):
            tok.decode([5, bad])


def test_folder_errors(tmp_path, folders):
    with pytest.raises(ValueError, match="does not exist"):
        Tokenizer.from_folder(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no tokenizer.json"):
        Tokenizer.from_folder(str(tmp_path))
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        Tokenizer.from_folder(fx.save_llama(str(tmp_path / "a"), bos_token="<bos>"))
    with pytest.raises(ValueError, match="no bos_token is named"):
        Tokenizer.from_folder(drop_post_processor(fx.save_llama(str(tmp_path / "b"),
                                                                bos_token=None)))
    with pytest.raises(ValueError, match="must be true or false"):
        Tokenizer.from_folder(fx.save_llama(str(tmp_path / "c"), add_bos_token="yes"))
    conflict = fx.save_llama(str(tmp_path / "d"))
    (tmp_path / "d" / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": {"content": "<unk>", "special": True}}))
    with pytest.raises(ValueError, match="eos_token is '</s>' in tokenizer_config.json but "
                                         "'<unk>' in special_tokens_map.json"):
        Tokenizer.from_folder(conflict)
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        Tokenizer(folders["llama"])


# ---- templates ------------------------------------------------------------------------------
def test_registry():
    assert template_names() == ["bare", "llama3", "phi", "plain", "vicuna_v1"]
    with pytest.raises(ValueError, match="unknown template 'vicuna'"):
        get_template("vicuna")
    with pytest.raises(ValueError, match="already registered"):
        register_template(get_template("phi"))
    with pytest.raises(ValueError, match="must be a prefix"):
        Template(name="t", system="", user="{content}", assistant="A: ", generation="B:",
                 answer_end="\n")
    assert [get_template(n).stop for n in ("vicuna_v1", "llama3", "phi", "plain", "bare")] == \
        ["</s>", "<|eot_id|>", "<|endoftext|>", "\n", "</s>"]


@pytest.mark.parametrize("turns", [1, 3])
@pytest.mark.parametrize("image", ["start", "middle", "end", None])
def test_build_prompt_matches_original(toks, turns, image):
    rng = random.Random()
    conv = conversation(rng, turns, image)[:-1]  # ends with a question
    texts = [t["value"] for t in ref.preprocess_multimodal(conv)]
    expected = {
        "vicuna_v1": ref.prompt_two(texts + [None]),
        # SliME removes its round marker before tokenizing in training but not in
        # get_prompt; a multi-turn inference prompt would carry it as text. We never emit it.
        "llama3": ref.prompt_llama3(texts + [None]).replace("<|eot_conversation|>", ""),
        "phi": ref.tinyllava_phi_prompt([t["value"] for t in conv[0::2]],
                                        [t["value"] for t in conv[1::2]] + [None]),
    }
    for name, prompt in expected.items():
        assert build_prompt(get_template(name), conv) == prompt, name
        tok, hf = toks[PAIRS[name][0]]
        assert tokenize_prompt(tok, prompt) == ref.tokenizer_image_token(prompt, hf), name
    if image is not None and turns == 1:
        assert build_prompt(get_template("plain"), conv) == "<image>"


@pytest.mark.parametrize("name", list(PAIRS))
@pytest.mark.parametrize("turns", [1, 2, 3])
@pytest.mark.parametrize("image", ["start", "middle", "end", None])
def test_conversation_ids_and_labels(toks, name, turns, image):
    rng = random.Random()
    tok, hf = toks[PAIRS[name][0]]
    template = get_template(name)
    for _ in range(5):
        conv = conversation(rng, turns, image)
        ids, labels = tokenize_conversation(tok, template, conv)
        ref_ids, ref_labels = PAIRS[name][1](conv, hf)
        assert ids == ref_ids, conv
        assert len(labels) == len(ids)
        # Where the original's hand count lands (it masks everything when it does not), our
        # labels are the same.
        if any(x != IGNORE_INDEX for x in ref_labels):
            assert labels == ref_labels, conv
        check_labels(tok, template, conv, ids, labels)


def check_labels(tok, template, conv, ids, labels):
    answers = [t["value"] for t in conv[1::2]]
    runs = label_runs(labels)
    assert [tok.decode(r, skip_special_tokens=False).lstrip(" ") for r in runs] == \
        [a + END[template.name] for a in answers], conv
    for x, y in zip(ids, labels):
        assert y in (x, IGNORE_INDEX)
    n_images = sum(t["value"].count("<image>") for t in conv)
    assert ids.count(IMAGE_TOKEN_INDEX) == n_images
    assert IMAGE_TOKEN_INDEX not in labels
    if tok.bos_id is not None and tok.special_prefix:
        assert ids[0] == tok.bos_id and labels[0] == IGNORE_INDEX
    assert all(0 <= x <= tok.max_id for x in ids if x != IMAGE_TOKEN_INDEX)


@pytest.mark.parametrize("name", list(SAVERS))
@pytest.mark.parametrize("image", ["start", "middle", "end"])
def test_plain_matches_original(toks, name, image):
    rng = random.Random()
    tok, hf = toks[name]
    for _ in range(5):
        conv = conversation(rng, 1, image)
        ids, labels = tokenize_conversation(tok, get_template("plain"), conv)
        assert (ids, labels) == ref.preprocess_plain(conv, hf), conv
        check_labels(tok, get_template("plain"), conv, ids, labels)
        # the question is dropped: only [BOS] <image> caption \n
        assert ids[:len(tok.special_prefix) + 1] == tok.special_prefix + [IMAGE_TOKEN_INDEX]


def test_vicuna_multi_turn_where_llava_count_fails(toks):
    # In a later round, "USER:" follows "</s>" with no "▁" (Metaspace prepends only at the
    # start of a text), but LLaVA counts the round re-tokenized alone, where "▁USER:" is one
    # token and "USER" ":" two here; its count falls one short, and it masks the whole
    # sample ("tokenization mismatch"). Counting by offsets has no such dependence.
    tok, hf = toks["llama"]
    conv = [{"from": "human", "value": "<image>\nWhat color is the car?"},
            {"from": "gpt", "value": "The car is blue."},
            {"from": "human", "value": "How many dogs are there?"},
            {"from": "gpt", "value": "There are three dogs."}]
    ids, labels = tokenize_conversation(tok, get_template("vicuna_v1"), conv)
    for legacy in (False, True):
        ref_ids, ref_labels = ref.preprocess_v1(conv, hf, legacy=legacy)
        assert ids == ref_ids
        assert set(ref_labels) == {IGNORE_INDEX}
    check_labels(tok, get_template("vicuna_v1"), conv, ids, labels)


@pytest.mark.parametrize("name", ["vicuna_v1", "phi"])
def test_separator_inside_a_question(toks, name):
    # A question ending in "ASSISTANT:" puts " ASSISTANT: " twice in the prompt; the
    # originals split rounds at its first occurrence and label the question's tail.
    tok, hf = toks[PAIRS[name][0]]
    conv = [{"from": "human", "value": "<image>\nWhat does the sign say? ASSISTANT:"},
            {"from": "gpt", "value": "The sign is blue."}]
    ids, labels = tokenize_conversation(tok, get_template(name), conv)
    ref_ids, ref_labels = PAIRS[name][1](conv, hf)
    assert ids == ref_ids
    check_labels(tok, get_template(name), conv, ids, labels)
    extra = [i for i, (a, b) in enumerate(zip(labels, ref_labels)) if a != b]
    assert extra and all(labels[i] == IGNORE_INDEX for i in extra)
    assert "ASSISTANT" in tok.decode([ref_labels[i] for i in extra])


@pytest.mark.parametrize("name", list(PAIRS))
def test_image_kept_in_place(toks, name):
    tok, _ = toks[PAIRS[name][0]]
    template = get_template(name)
    conv = [{"from": "human", "value": "What is <image> shown here?"},
            {"from": "gpt", "value": "A cat."}]
    ids, labels = tokenize_conversation(tok, template, conv, image_first=False)
    before, after = build_prompt(template, conv[:1], image_first=False).split("<image>")
    k = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[:k] == tok.encode(before)
    assert ids[k + 1:k + 1 + len(tok.encode(after, add_special_tokens=False))] == \
        tok.encode(after, add_special_tokens=False)
    check_labels(tok, template, conv, ids, labels)
    moved, _ = tokenize_conversation(tok, template, conv)
    assert moved.index(IMAGE_TOKEN_INDEX) < k


@pytest.mark.parametrize("conv, match", [
    ([], "non-empty list"),
    ([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}], "alternate"),
    ([{"from": "human", "value": "q"}, {"from": "human", "value": "q"}], "alternate"),
    ([{"from": "human", "value": "q"}], "no answer"),
    ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
      {"from": "human", "value": "q2"}], "no answer"),
    ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}], "empty"),
    ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "<image>"}], "answer cannot"),
    ([{"from": "human", "text": "q"}], "'from' and 'value'"),
    ([{"from": "human", "value": "<image> <image> q"}, {"from": "gpt", "value": "a"}],
     "2 '<image>' placeholders"),
])
def test_malformed_conversations(toks, conv, match):
    tok, _ = toks["llama"]
    with pytest.raises(ValueError, match=match):
        tokenize_conversation(tok, get_template("vicuna_v1"), conv)


def test_template_errors(toks):
    tok, _ = toks["llama"]
    qa = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    with pytest.raises(ValueError, match="must end with a 'human' turn"):
        build_prompt(get_template("vicuna_v1"), qa)
    for conv in (qa + qa, [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]):
        with pytest.raises(ValueError, match="takes one question holding one"):
            tokenize_conversation(tok, get_template("plain"), conv)
    # a template whose special strings this tokenizer does not have
    with pytest.raises(ValueError, match="'llama3' needs '<|start_header_id|>' to be one"):
        tokenize_conversation(tok, get_template("llama3"), qa)
    with pytest.raises(ValueError, match="'vicuna_v1' needs '</s>'"):
        tokenize_conversation(toks["phi"][0], get_template("vicuna_v1"), qa)
    with pytest.raises(TypeError, match="slime_core.text.Tokenizer"):
        tokenize_conversation(toks["llama"][1], get_template("vicuna_v1"), qa)
    with pytest.raises(TypeError, match="must be a Template"):
        tokenize_conversation(tok, "vicuna_v1", qa)


def test_package_does_not_import_transformers():
    import subprocess
    import sys
    code = ("import sys, slime_core.text; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))))
