"""Text side of the model: an HF `tokenizer.json` read with `tokenizers` alone, and the
conversation templates LLaVA, SliME and TinyLLaVA train and prompt with.

    tok = Tokenizer.from_folder(folder)            # tokenizer.json (+ tokenizer_config.json,
    tok.check_fits(model.embed_tokens.num_embeddings)  # special_tokens_map.json)
    ids, labels = tokenize_conversation(tok, get_template("vicuna_v1"), [
        {"from": "human", "value": "<image>\\nWhat is shown?"},
        {"from": "gpt", "value": "A cat."},
    ])
    prompt = build_prompt(get_template("vicuna_v1"), [{"from": "human", "value": "<image>\\nHi"}])
    ids = tokenize_prompt(tok, prompt)

`<image>` is a placeholder, never a token: the text is cut at each `<image>`, the pieces are
tokenized on their own (as LLaVA's `tokenizer_image_token` does, so the ids are the same),
and the image's place holds IMAGE_TOKEN_INDEX, which the model replaces by visual tokens
before anything indexes the embedding table.

Labels are the ids of what the model must generate after each turn's inference prompt: the
answer and the end-of-answer string after it (the template's stop string); every other
position holds IGNORE_INDEX. Which tokens those are is read from the tokenizer's character
offsets, so the mask is exact by construction, where LLaVA re-tokenizes pieces and corrects
the counts by hand (the "- 2" and the "legacy" branch of preprocess_v1). In the tests the
ids equal the original's, and the labels differ only where its counts go wrong, which
depends on the vocabulary: a later round whose first word tokenizes differently after
"</s>" than alone (LLaVA then masks the whole sample, "tokenization mismatch"), or a
question holding the separator " ASSISTANT: " (LLaVA labels the question's tail).
SliME's multi-turn Llama-3 inference prompt keeps its round marker "<|eot_conversation|>"
as text; ours never holds it (its training text does not). What the originals repair
silently is an error here: a conversation opening with a "gpt" turn (dropped there),
several <image> in one turn (merged into one there).
"""
import bisect
import dataclasses
import json
import os

from tokenizers import AddedToken
from tokenizers import Tokenizer as _Backend

IGNORE_INDEX = -100  # label of a position that takes no loss (LLaVA's value)
IMAGE_TOKEN_INDEX = -200  # input id marking an image's place (LLaVA's value)
IMAGE_PLACEHOLDER = "<image>"

_SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


def _token_content(value, source, name):
    """A special token named in a config file: a string, or an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{source}: {name} must be a string or {{'content': ...}}, got {value!r}")


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e


class Tokenizer:
    """An HF fast tokenizer's behaviour (encode, decode, special tokens) on `tokenizers` alone.

    Which special tokens `encode(..., add_special_tokens=True)` adds follows transformers 5:
    the post-processor in tokenizer.json decides when there is one (Llama 2/3 files add BOS
    there, GPT-2 and Phi files add nothing), and tokenizer_config.json's `add_bos_token` /
    `add_eos_token` only when there is none. One of the two decides, so BOS is never added
    twice.
    """

    # The backend passed in is taken over (special tokens registered, truncation and
    # padding switched off); from_folder builds a fresh one.
    def __init__(self, backend, bos_token=None, eos_token=None, pad_token=None, unk_token=None,
                 add_bos_token=False, add_eos_token=False):
        if not isinstance(backend, _Backend):
            raise TypeError(f"backend must be a tokenizers.Tokenizer, got {type(backend).__name__}")
        self._backend = backend
        named = dict(bos_token=bos_token, eos_token=eos_token, pad_token=pad_token,
                     unk_token=unk_token)
        self._ids = {}
        for name, token in named.items():
            if token is not None and not isinstance(token, str):
                raise TypeError(f"{name} must be a string or None, got {type(token).__name__}")
            token_id = None if token is None else backend.token_to_id(token)
            if token is not None and token_id is None:
                raise ValueError(f"{name} {token!r} is not in the tokenizer's vocabulary")
            self._ids[name] = token_id
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token, self.unk_token = pad_token, unk_token
        # transformers registers the named special tokens as special added tokens: the
        # string "</s>" in a prompt is then one token, and decoding can skip it.
        backend.add_special_tokens([AddedToken(t, special=True) for t in named.values() if t])
        # A tokenizer.json may switch truncation or padding on; transformers only applies
        # them when a call asks, and neither belongs in a conversation's ids.
        backend.no_truncation()
        backend.no_padding()

        if backend.post_processor is not None:
            prefix, suffix = self._probe_post_processor()
        else:
            for name, flag, token in (("add_bos_token", add_bos_token, bos_token),
                                      ("add_eos_token", add_eos_token, eos_token)):
                if flag and token is None:
                    raise ValueError(f"{name} is true but no {name[4:]} is named")
            prefix = [self._ids["bos_token"]] if add_bos_token else []
            suffix = [self._ids["eos_token"]] if add_eos_token else []
        self._prefix, self._suffix = prefix, suffix
        # Encodings come from a copy without post-processor: post-processors only add special
        # tokens or move offsets (GPT-2's trims spaces from them), and we need plain offsets.
        self._plain = _Backend.from_str(backend.to_str())
        self._plain.post_processor = None
        self._max_id = max(backend.get_vocab(with_added_tokens=True).values())

    @classmethod
    def from_folder(cls, folder):
        """Read `folder/tokenizer.json`, and tokenizer_config.json / special_tokens_map.json
        where present, for the special tokens and `add_bos_token` / `add_eos_token`."""
        if not os.path.isdir(folder):
            raise ValueError(f"tokenizer folder {folder!r} does not exist")
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(path):
            raise ValueError(f"{folder!r} has no tokenizer.json (a slow-only tokenizer such as "
                             "tokenizer.model must be converted to tokenizer.json first)")
        backend = _Backend.from_file(path)
        kwargs = {}
        config_path = os.path.join(folder, "tokenizer_config.json")
        config = _read_json(config_path) if os.path.isfile(config_path) else {}
        map_path = os.path.join(folder, "special_tokens_map.json")
        special_map = _read_json(map_path) if os.path.isfile(map_path) else {}
        for name in _SPECIAL_NAMES:
            a = _token_content(config.get(name), config_path, name)
            b = _token_content(special_map.get(name), map_path, name)
            if a is not None and b is not None and a != b:
                raise ValueError(f"{name} is {a!r} in tokenizer_config.json but {b!r} in "
                                 "special_tokens_map.json")
            kwargs[name] = a if a is not None else b
        for name in ("add_bos_token", "add_eos_token"):
            if name in config:
                if not isinstance(config[name], bool):
                    raise ValueError(f"{config_path}: {name} must be true or false, "
                                     f"got {config[name]!r}")
                kwargs[name] = config[name]
        return cls(backend, **kwargs)

    def _probe_post_processor(self):
        """The ids tokenizer.json's post-processor puts before and after a text."""
        for probe in ("a", "Hello world", "0", "."):
            plain = self._backend.encode(probe, add_special_tokens=False).ids
            if plain:  # an empty encoding cannot tell a prefix from a suffix
                break
        else:
            raise ValueError("tokenizer.json encodes none of the probe texts to any token")
        full = self._backend.encode(probe, add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start], full[start + len(plain):]
        raise ValueError("tokenizer.json's post-processor changes the text's own ids; only "
                         "processors that add special tokens around the text are supported")

    # ---- ids of the special tokens -------------------------------------------------------
    @property
    def bos_id(self):
        """The beginning-of-sequence id, or None."""
        return self._ids["bos_token"]

    @property
    def eos_id(self):
        """The end-of-sequence id, or None."""
        return self._ids["eos_token"]

    @property
    def pad_id(self):
        """The padding id from the config, or None."""
        return self._ids["pad_token"]

    @property
    def unk_id(self):
        """The unknown-token id, or None."""
        return self._ids["unk_token"]

    @property
    def special_prefix(self):
        """Ids `encode(..., add_special_tokens=True)` puts before the text (BOS, or none)."""
        return list(self._prefix)

    @property
    def vocab_size(self):
        """Number of tokens, added tokens included (what `len(hf_tokenizer)` says)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def __len__(self):
        return self.vocab_size

    @property
    def max_id(self):
        """The largest id the tokenizer can produce (check_fits compares it)."""
        return self._max_id

    def token_to_id(self, token):
        """The id of a token string, or None."""
        return self._backend.token_to_id(token)

    def check_fits(self, num_embeddings):
        """Raise if an id this tokenizer can produce has no row in an embedding table of
        `num_embeddings` rows (a tokenizer from another model, or a table not resized after
        tokens were added). A table larger than the vocabulary is fine (padded tables)."""
        if isinstance(num_embeddings, bool) or not isinstance(num_embeddings, int):
            raise TypeError(f"num_embeddings must be an int, got {type(num_embeddings).__name__}")
        if self.max_id >= num_embeddings:
            raise ValueError(f"the tokenizer's largest id is {self.max_id} (vocabulary of "
                             f"{self.vocab_size} tokens) but the embedding table has only "
                             f"{num_embeddings} rows: tokenizer and model do not match")

    # ---- text <-> ids --------------------------------------------------------------------
    def encode(self, text, add_special_tokens=True):
        """Ids of `text` (a `<image>` in it is ordinary text here; see tokenize_prompt)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._plain.encode(text, add_special_tokens=False).ids
        return self._prefix + ids + self._suffix if add_special_tokens else ids

    def _encode_with_offsets(self, text):
        enc = self._plain.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids, skip_special_tokens=True):
        """Text of `ids` (special tokens dropped unless asked); ids outside the vocabulary
        are an error."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i <= self._max_id]
        if bad:
            raise ValueError(f"ids outside the vocabulary (0..{self.max_id}) cannot be decoded: "
                             f"{bad[:5]} (IMAGE_TOKEN_INDEX={IMAGE_TOKEN_INDEX} and "
                             f"IGNORE_INDEX={IGNORE_INDEX} must be removed first)")
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)


# ---- conversation templates ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Template:
    """How a conversation becomes one string. Training text:
    system + for each turn: user.format(content=question) + assistant + answer + answer_end.
    Inference prompt: system + the finished turns + user.format(content=last question) +
    generation (a prefix of `assistant`); the model goes on from there until answer_end.
    Labels are what the model must generate after that prompt: the rest of `assistant`
    (Vicuna's space after "ASSISTANT:"), the answer and answer_end."""

    name: str
    system: str  # before the first turn
    user: str  # a user turn; "{content}" is the question (absent: the question is dropped)
    assistant: str  # between a question and its answer in training text
    generation: str  # what an inference prompt ends with (Vicuna's has no trailing space)
    answer_end: str  # after each answer, labelled; the stop string in generation
    required_tokens: tuple = ()  # template strings that must be single tokens
    single_image_turn: bool = False  # exactly one turn, its question holding one <image>

    def __post_init__(self):
        if not self.assistant.startswith(self.generation):
            raise ValueError(f"template {self.name!r}: generation {self.generation!r} must be a "
                             f"prefix of assistant {self.assistant!r}")

    @property
    def stop(self):
        """The string that ends an answer (generation stops on it)."""
        return self.answer_end


_TEMPLATES = {}


def register_template(template):
    """Adds a Template under its exact name (a duplicate name is an error)."""
    if not isinstance(template, Template):
        raise TypeError(f"template must be a Template, got {type(template).__name__}")
    if template.name in _TEMPLATES:
        raise ValueError(f"a template named {template.name!r} is already registered")
    _TEMPLATES[template.name] = template
    return template


def get_template(name):
    """The Template registered as `name` (an unknown name lists the known ones)."""
    if name not in _TEMPLATES:
        raise ValueError(f"unknown template {name!r}; known: {sorted(_TEMPLATES)}")
    return _TEMPLATES[name]


def template_names():
    """The registered template names, sorted."""
    return sorted(_TEMPLATES)


_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's "
                  "questions.")

# LLaVA pre-training (conv_llava_plain + preprocess_plain): the question is replaced by the
# image alone; the caption and a newline are the labels.
register_template(Template(
    name="plain", system="", user=IMAGE_PLACEHOLDER, assistant="", generation="",
    answer_end="\n", single_image_turn=True))
# LLaVA-1.5 / SliME-7B/13B (conv_vicuna_v1, SeparatorStyle.TWO).
register_template(Template(
    name="vicuna_v1", system=_VICUNA_SYSTEM + " ", user="USER: {content} ",
    assistant="ASSISTANT: ", generation="ASSISTANT:", answer_end="</s>",
    required_tokens=("</s>",)))
# SliME-8B (its conv_llama_3): no system turn, BOS from the tokenizer. SliME's separator
# "<|eot_conversation|>" only splits rounds in its preprocessing and is removed before
# tokenizing, so it does not appear here.
register_template(Template(
    name="llama3", system="",
    user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
    assistant="<|start_header_id|>assistant<|end_header_id|>\n\n",
    generation="<|start_header_id|>assistant<|end_header_id|>\n\n", answer_end="<|eot_id|>",
    required_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")))
# The fewest words around a question: the question, then the answer and "</s>" (no roles, no
# system turn). For tiny LLMs trained from scratch, like the demo's: SliME's text-guided
# selection scores each local token against every token of the prompt, template included,
# and at a width of 96 a chat template's dozen tokens outweigh the question's own words.
register_template(Template(
    name="bare", system="", user="{content}\n", assistant="", generation="",
    answer_end="</s>", required_tokens=("</s>",)))
# TinyLLaVA Factory's PhiTemplate: Vicuna's layout with Phi-2's end of text.
register_template(Template(
    name="phi", system=_VICUNA_SYSTEM + " ", user="USER: {content} ",
    assistant="ASSISTANT: ", generation="ASSISTANT:", answer_end="<|endoftext|>",
    required_tokens=("<|endoftext|>",)))


def _image_first(text):
    """LLaVA's preprocess_multimodal (and TinyLLaVA's image formatter): a question holding
    <image> becomes "<image>\\n" + the rest, stripped."""
    if IMAGE_PLACEHOLDER not in text:
        return text
    if text.count(IMAGE_PLACEHOLDER) > 1:
        # LLaVA would silently keep one of them; one placeholder stands for one image.
        raise ValueError(f"a turn holds {text.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER!r} "
                         "placeholders; with image_first=True a turn may hold one")
    rest = text.replace(IMAGE_PLACEHOLDER, "").strip()
    return (IMAGE_PLACEHOLDER + "\n" + rest).strip()


def _turns(template, conversation, for_generation):
    """Validate a LLaVA-format conversation; return (question, answer) pairs, the last
    answer None when for_generation."""
    if not isinstance(template, Template):
        raise TypeError(f"template must be a Template, got {type(template).__name__}")
    if not isinstance(conversation, (list, tuple)) or not conversation:
        raise ValueError("conversation must be a non-empty list of {'from', 'value'} turns")
    expected = ("human", "gpt")
    for i, turn in enumerate(conversation):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"turn {i} must be a dict with 'from' and 'value', got {turn!r}")
        if turn["from"] != expected[i % 2]:
            raise ValueError(f"turn {i} is from {turn['from']!r} but turns must alternate "
                             "'human', 'gpt', starting with 'human'")
        if not isinstance(turn["value"], str) or not turn["value"].strip():
            raise ValueError(f"turn {i} ({turn['from']}) has an empty or non-string value")
        if turn["from"] == "gpt" and IMAGE_PLACEHOLDER in turn["value"]:
            raise ValueError(f"turn {i}: an answer cannot hold {IMAGE_PLACEHOLDER!r}")
    if for_generation and len(conversation) % 2 == 0:
        raise ValueError("a generation prompt's conversation must end with a 'human' turn")
    if not for_generation and len(conversation) % 2 == 1:
        raise ValueError("the conversation ends with a question that has no answer")
    questions = [t["value"] for t in conversation[0::2]]
    answers = [t["value"] for t in conversation[1::2]] + ([None] if for_generation else [])
    if template.single_image_turn and (
            len(questions) != 1 or questions[0].count(IMAGE_PLACEHOLDER) != 1):
        raise ValueError(f"template {template.name!r} takes one question holding one "
                         f"{IMAGE_PLACEHOLDER!r} and one answer")
    return list(zip(questions, answers))


def _segments(template, conversation, for_generation, image_first):
    """The text as (piece, is_label) segments."""
    turns = _turns(template, conversation, for_generation)
    segments = [(template.system, False)]
    for question, answer in turns:
        if image_first:
            question = _image_first(question)
        segments.append((template.user.format(content=question), False))
        if answer is None:
            segments.append((template.generation, False))
        else:
            cut = len(template.generation)
            segments += [(template.assistant[:cut], False),
                         (template.assistant[cut:] + answer + template.answer_end, True)]
    return segments


def build_prompt(template, conversation, image_first=True):
    """The inference prompt: the conversation so far (ending with a question) followed by
    the assistant's role; generate until `template.stop`. image_first moves each question's
    <image> to its front as LLaVA's training data has it."""
    return "".join(s for s, _ in _segments(template, conversation, True, image_first))


def _check_template_tokens(tokenizer, template):
    for s in template.required_tokens:
        ids = tokenizer.encode(s, add_special_tokens=False)
        if len(ids) != 1 or tokenizer.token_to_id(s) != ids[0]:
            raise ValueError(f"template {template.name!r} needs {s!r} to be one token, but this "
                             f"tokenizer splits it into {ids}: tokenizer and template do not match")


def _tokenize_segments(tokenizer, segments):
    """Cut the text at each <image>, tokenize the pieces, mark labels by character offsets."""
    text, spans, pos = "", [], 0
    for piece, is_label in segments:
        if is_label and piece:
            spans.append((pos, pos + len(piece)))
        text += piece
        pos += len(piece)
    ends = [hi for _, hi in spans]  # spans are disjoint and in order
    prefix = tokenizer.special_prefix
    input_ids, labels = list(prefix), [IGNORE_INDEX] * len(prefix)
    start = 0
    for k, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if k:
            input_ids.append(IMAGE_TOKEN_INDEX)
            labels.append(IGNORE_INDEX)
        ids, offsets = tokenizer._encode_with_offsets(chunk)
        for token_id, (a, b) in zip(ids, offsets):
            a, b = a + start, b + start
            # A token overlapping a label span is a label: BPE merges the space after
            # "ASSISTANT:" into the answer's first word (LLaVA labels that token too).
            j = bisect.bisect_right(ends, a)  # the first span ending after a
            in_answer = j < len(spans) and spans[j][0] < b
            input_ids.append(token_id)
            labels.append(token_id if in_answer else IGNORE_INDEX)
        start += len(chunk) + len(IMAGE_PLACEHOLDER)
    return input_ids, labels


def tokenize_prompt(tokenizer, prompt):
    """Ids of an inference prompt: BOS (if the tokenizer adds one), the text pieces, and
    IMAGE_TOKEN_INDEX at each <image> (LLaVA's tokenizer_image_token)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    return _tokenize_segments(tokenizer, [(prompt, False)])[0]


def tokenize_conversation(tokenizer, template, conversation, image_first=True):
    """Training ids and labels of a LLaVA-format conversation
    ([{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]).

    Returns (input_ids, labels), two lists of equal length: input_ids hold
    IMAGE_TOKEN_INDEX at each <image>; labels hold the ids the model must generate after
    each turn's inference prompt (see Template), IGNORE_INDEX elsewhere."""
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be a slime_core.text.Tokenizer, "
                        f"got {type(tokenizer).__name__}")
    segments = _segments(template, conversation, False, image_first)
    _check_template_tokens(tokenizer, template)
    return _tokenize_segments(tokenizer, segments)
