"""Small real tokenizers, trained with `tokenizers` on a few sentences and saved the way the
released models ship them (tokenizer.json + tokenizer_config.json):

- "llama": Llama-2 / Vicuna style, SentencePiece-like BPE (Metaspace "▁", prepend only at
  the start of the text, byte fallback), <unk>=0 <s>=1 </s>=2, BOS from the post-processor
  and `add_bos_token: true` in the config, as LLaVA-1.5's Vicuna folder has it.
- "llama3": byte-level BPE with Llama 3's special tokens added after the vocabulary,
  <|begin_of_text|> from the post-processor, no add_bos_token in the config.
- "phi": GPT-2 / Phi-2 style byte-level BPE, <|endoftext|> as bos = eos = unk, no BOS.
"""
import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is shown in the image? ASSISTANT: A cat sitting on a red sofa.",
    "USER: How many dogs are there? ASSISTANT: There are three dogs in the park.",
    "What color is the car? The car is blue and parked near the house.",
    "Describe the picture in detail. A man rides a bicycle along the river at sunset.",
    "Is there a person in the photo? Yes, a woman is holding an umbrella in the rain.",
    "user assistant system image photo picture question answer caption",
    "The quick brown fox jumps over the lazy dog 0123456789 times!",
    "Zebras, giraffes and elephants drink water at the lake; birds fly above them.",
]

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>"]


def _save(folder, tok, config, special_map=None):
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(dict(config, tokenizer_class="PreTrainedTokenizerFast"), f)
    if special_map is not None:
        with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
            json.dump(special_map, f)
    return folder


def llama_tokenizer(vocab_size=420):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # SentencePiece never merges across words: train on words, then ship with split=False
    # as transformers' Llama conversion writes it.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    # Llama's byte-fallback pieces <0x00>..<0xFF> sit right after the three specials.
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    shifted = {t: (i if i < 3 else i + 256) for t, i in vocab.items()}
    shifted.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    spec["model"]["vocab"] = shifted
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


def byte_level_tokenizer(specials, vocab_size=400):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)  # after the vocabulary, as Llama 3's and GPT-2's are
    return tok


def save_llama(folder, **config):
    cfg = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token=None,
               add_bos_token=True, add_eos_token=False)
    cfg.update(config)
    return _save(folder, llama_tokenizer(), cfg)


def save_llama3(folder):
    tok = byte_level_tokenizer(LLAMA3_SPECIALS)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return _save(folder, tok, dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"))


def save_phi(folder):
    tok = byte_level_tokenizer(["<|endoftext|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    end = "<|endoftext|>"
    return _save(folder, tok, dict(bos_token=end, eos_token=end, unk_token=end),
                 special_map=dict(bos_token=end, eos_token=end, unk_token=end))
