"""Test-only restatement of how the original code turns a conversation into ids and labels,
step by step, on an HF transformers tokenizer. Sources restated (not copied):

- SliME (yfzhang114/SliME) llava/mm_utils.py `tokenizer_image_token`; llava/conversation.py
  `Conversation.get_prompt` for the TWO (vicuna_v1), LLAMA_3 (llama3) and PLAIN styles;
  llava/train/train.py `preprocess_multimodal`, `preprocess_v1`, `preprocess_llama3`,
  `preprocess_plain` (the same as haotian-liu/LLaVA's for v1 and plain).
- TinyLLaVA Factory tinyllava/data/template/base.py `Template.encode` / `_make_masks` with
  phi_template.py's strings.

The label counting keeps the originals' hand corrections (the "- 2", the "legacy" branch,
the per-round BOS arithmetic) because those are what is being compared against.
"""
IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
IMAGE = "<image>"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's "
                 "questions.")


def tokenizer_image_token(prompt, tok):
    chunks = [tok(c).input_ids for c in prompt.split(IMAGE)]
    out = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == tok.bos_token_id:
        offset = 1
        out.append(chunks[0][0])
    # every chunk after the first loses its first `offset` ids (its BOS); each image is
    # one sentinel
    for k, chunk in enumerate(chunks):
        if k:
            out.append(IMAGE_TOKEN_INDEX)
        out.extend(chunk[offset:])
    return out


def preprocess_multimodal(conversation):
    out = []
    for turn in conversation:
        value = turn["value"]
        if IMAGE in value:
            value = (IMAGE + "\n" + value.replace(IMAGE, "").strip()).strip()
        out.append({"from": turn["from"], "value": value})
    return out


# ---- prompts (Conversation.get_prompt) ----------------------------------------------------
def prompt_two(messages, system=VICUNA_SYSTEM, roles=("USER", "ASSISTANT"), sep=" ",
               sep2="</s>"):
    """messages: list of texts, alternating user/assistant; None = generation slot."""
    seps = [sep, sep2]
    ret = system + seps[0]
    for i, message in enumerate(messages):
        if message:
            ret += roles[i % 2] + ": " + message + seps[i % 2]
        else:
            ret += roles[i % 2] + ":"
    return ret


def prompt_llama3(messages, roles=("user", "assistant"), sep2="<|eot_conversation|>"):
    ret = ""
    for i, message in enumerate(messages):
        head = f"<|start_header_id|>{roles[i % 2]}<|end_header_id|>\n\n"
        if i % 2 == 0:
            ret += head + f"{message}<|eot_id|>"
        elif message is None:
            ret += head
        else:
            ret += head + f"{message}<|eot_id|>" + sep2
    return ret


# ---- training ids and labels ----------------------------------------------------------------
def preprocess_v1(conversation, tok, legacy):
    conversation = preprocess_multimodal(conversation)
    prompt = prompt_two([t["value"] for t in conversation])
    input_ids = tokenizer_image_token(prompt, tok)
    target = list(input_ids)
    sep = " " + "ASSISTANT" + ": "
    cur = 1
    target[:cur] = [IGNORE_INDEX] * cur
    for i, rou in enumerate(prompt.split("</s>")):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(tokenizer_image_token(rou, tok))
        instruction_len = len(tokenizer_image_token(parts[0], tok)) - 2
        if i != 0 and not legacy:
            round_len -= 1
            instruction_len -= 1
        target[cur:cur + instruction_len] = [IGNORE_INDEX] * len(target[cur:cur + instruction_len])
        cur += round_len
    target[cur:] = [IGNORE_INDEX] * len(target[cur:])
    if cur != len(input_ids):
        target = [IGNORE_INDEX] * len(input_ids)  # "WARNING: tokenization mismatch"
    return input_ids, target


def preprocess_llama3(conversation, tok, legacy=False):
    conversation = preprocess_multimodal(conversation)
    sep2 = "<|eot_conversation|>"
    prompt = prompt_llama3([t["value"] for t in conversation], sep2=sep2)
    input_ids = tokenizer_image_token(prompt.replace(sep2, ""), tok)
    target = list(input_ids)
    sep = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    cur = 0
    for i, rou in enumerate(prompt.split(sep2)):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(tokenizer_image_token(rou, tok))
        instruction_len = len(tokenizer_image_token(parts[0], tok))
        if i != 0 and not legacy:
            round_len -= 1
            instruction_len -= 1
        target[cur:cur + instruction_len] = [IGNORE_INDEX] * len(target[cur:cur + instruction_len])
        cur += round_len
    target[cur:] = [IGNORE_INDEX] * len(target[cur:])
    if cur != len(input_ids):
        target = [IGNORE_INDEX] * len(input_ids)
    return input_ids, target


def preprocess_plain(conversation, tok, sep="\n"):
    conversation = preprocess_multimodal(conversation)
    assert len(conversation) == 2 and IMAGE in conversation[0]["value"]
    prompt = IMAGE + conversation[1]["value"] + sep
    input_ids = tokenizer_image_token(prompt, tok)
    target = list(input_ids)
    n = len(tokenizer_image_token(IMAGE, tok))
    target[:n] = [IGNORE_INDEX] * n
    return input_ids, target


def tinyllava_phi(conversation, tok):
    """TinyLLaVA's base Template.encode(mode='train') with PhiTemplate's strings."""
    questions = [t["value"] for t in conversation[0::2]]
    answers = [t["value"] for t in conversation[1::2]]
    prompt = ""
    for i, (q, a) in enumerate(zip(questions, answers)):
        if i == 0:
            prompt += VICUNA_SYSTEM + " "
        if IMAGE in q:
            q = ("<image>\n" + q.replace(IMAGE, "").strip()).strip()
        prompt += "USER: " + q + " " + "ASSISTANT: " + a + "<|endoftext|>"
    input_ids = tokenizer_image_token(prompt, tok)
    labels = list(input_ids)
    sep, eos = " ASSISTANT: ", "<|endoftext|>"
    total_len = sum(1 for x in labels if x != tok.pad_token_id)
    if tok.pad_token_id == tok.eos_token_id:
        total_len += prompt.count(eos)
    eos_len = len(tok.encode(eos))
    cur = 0
    for rou in prompt.split(eos):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(tokenizer_image_token(rou, tok)) + eos_len
        instruction_len = len(tokenizer_image_token(parts[0], tok)) - 1
        labels[cur:cur + instruction_len] = [IGNORE_INDEX] * len(labels[cur:cur + instruction_len])
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    if cur != total_len:
        labels = [IGNORE_INDEX] * len(input_ids)
    return input_ids, labels


def tinyllava_phi_prompt(questions, answers):
    """TinyLLaVA's eval prompt: the last answer is None, which formats as "ASSISTANT:"."""
    prompt = VICUNA_SYSTEM + " "
    for q, a in zip(questions, answers):
        if IMAGE in q:
            q = ("<image>\n" + q.replace(IMAGE, "").strip()).strip()
        prompt += "USER: " + q + " " + ("ASSISTANT:" if a is None else
                                        "ASSISTANT: " + a + "<|endoftext|>")
    return prompt
