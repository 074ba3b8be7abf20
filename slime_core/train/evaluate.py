"""Exact-match evaluation: batched greedy generation (with the KV cache) over a question
set, answers compared after normalisation, overall and per question type.

    questions = load_questions("questions.jsonl")        # or a list of dicts
    result = evaluate(model, tokenizer, get_template("vicuna_v1"), processor, questions,
                      image_folder="images/", batch_size=16)
    result["accuracy"], result["per_type"]["color"]["accuracy"], result["predictions"]

A question is a dict with
    question_id   any JSON value (default: its position)
    image         a path (joined to image_folder), or an image object the processor takes
                  (PIL image, uint8 array or tensor)
    question      the user's text; "<image>" is put in front of it when absent (LLaVA's
                  evaluation scripts do the same)
    answer        the reference answer, or a list of accepted answers
    question_type the group it is counted in ("all" when absent)
load_questions reads LLaVA's formats into that: evaluation question files (JSONL with
question_id, image, text, category and an answer field), and training-style files (JSON
list with conversations [{"from": "human", ...}, {"from": "gpt", ...}]), whose first
human turn is the question and the gpt turn after it the answer.
"""
import json
import os

import torch

from slime_core.text import IMAGE_PLACEHOLDER, build_prompt, tokenize_prompt

_ANSWER_KEYS = ("answer", "answers", "gt_answer", "gt_answers", "label")
_TYPE_KEYS = ("question_type", "category", "type")


def normalize_answer(text):
    """What exact match compares: stripped, lower case, without a trailing period."""
    s = str(text).strip().lower()
    if s.endswith("."):
        s = s[:-1].rstrip()
    return s


def exact_match(prediction, answer):
    """Whether the prediction equals the answer (or one of a list of answers), normalised."""
    answers = answer if isinstance(answer, (list, tuple)) else [answer]
    p = normalize_answer(prediction)
    return any(p == normalize_answer(a) for a in answers)


def _from_record(rec, i):
    if not isinstance(rec, dict):
        raise ValueError(f"question {i} is not a JSON object: {rec!r}")
    q = {"question_id": rec.get("question_id", rec.get("id", i)), "image": rec.get("image")}
    if "conversations" in rec:
        conv = rec["conversations"]
        human = [k for k, t in enumerate(conv) if t.get("from") == "human"]
        if not human or human[0] + 1 >= len(conv) or conv[human[0] + 1].get("from") != "gpt":
            raise ValueError(f"question {i}: conversations need a human turn followed by a "
                             "gpt turn")
        q["question"], q["answer"] = conv[human[0]]["value"], conv[human[0] + 1]["value"]
    else:
        text = rec.get("question", rec.get("text", rec.get("prompt")))
        if text is None:
            raise ValueError(f"question {i} has no question/text field")
        q["question"] = text
        found = [k for k in _ANSWER_KEYS if k in rec]
        if not found:
            raise ValueError(f"question {i} has no answer field (one of {_ANSWER_KEYS})")
        q["answer"] = rec[found[0]]
    q["question_type"] = next((str(rec[k]) for k in _TYPE_KEYS if rec.get(k) is not None),
                              "all")
    if q["image"] is None:
        raise ValueError(f"question {i} ({q['question_id']!r}) has no image")
    return q


def load_questions(path_or_records):
    """The question dicts (module docstring) from a .jsonl / .json file or a list."""
    if isinstance(path_or_records, (list, tuple)):
        records = list(path_or_records)
    else:
        with open(path_or_records, encoding="utf-8") as f:
            text = f.read()
        if str(path_or_records).endswith(".jsonl"):
            records = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        else:
            records = json.loads(text)
            if not isinstance(records, list):
                raise ValueError(f"{path_or_records}: expected a JSON list of questions")
    return [_from_record(r, i) for i, r in enumerate(records)]


def stop_ids(tokenizer, template):
    """Token ids generation stops at: the template's stop string when it is one token, and
    the tokenizer's end of sequence."""
    ids = []
    if template.stop:
        one = tokenizer.token_to_id(template.stop)
        if one is not None:
            ids.append(one)
    if tokenizer.eos_id is not None and tokenizer.eos_id not in ids:
        ids.append(tokenizer.eos_id)
    return ids


def _image(q, image_folder):
    img = q["image"]
    if isinstance(img, (str, os.PathLike)) and image_folder is not None:
        return os.path.join(image_folder, img)
    return img


@torch.no_grad()
def generate_answers(model, tokenizer, template, processor, questions, image_folder=None,
                     batch_size=8, max_new_tokens=32):
    """Greedy answers (decoded, cut at the template's stop string, stripped) of the
    questions, batch_size at a time: prompts right-padded into one batch, the model
    splices the images in and generates for all rows at once with its KV cache."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    model.eval()
    stops = stop_ids(tokenizer, template)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else (stops[0] if stops else 0)
    answers = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        prompts = []
        for q in chunk:
            text = q["question"]
            if IMAGE_PLACEHOLDER not in text:
                text = IMAGE_PLACEHOLDER + "\n" + text
            prompts.append(tokenize_prompt(tokenizer, build_prompt(
                template, [{"from": "human", "value": text}])))
        T = max(len(p) for p in prompts)
        ids = torch.full((len(chunk), T), pad, dtype=torch.int64)
        mask = torch.zeros((len(chunk), T), dtype=torch.int64)
        for b, p in enumerate(prompts):
            ids[b, :len(p)] = torch.tensor(p)
            mask[b, :len(p)] = 1
        images = processor([_image(q, image_folder) for q in chunk])
        new = model.generate(ids.to(device), mask.to(device),
                             images.pixel_values.to(device, model.vision_tower.dtype),
                             images.crops_per_image, images.grids_wh,
                             max_new_tokens=max_new_tokens, stop_token_ids=stops,
                             pad_token_id=pad)
        answers += [answer_text(tokenizer, template, row) for row in new.tolist()]
    return answers


def answer_text(tokenizer, template, ids):
    """The text of generated ids: decoded, cut at the template's stop string, stripped."""
    # Ids past the tokenizer's vocabulary (a padded embedding table) have no text.
    text = tokenizer.decode([t for t in ids if t <= tokenizer.max_id], skip_special_tokens=True)
    if template.stop and template.stop in text:
        text = text[:text.index(template.stop)]
    return text.strip()


def score(questions, predictions):
    """{"accuracy", "correct", "count", "per_type": {type: {...}}, "predictions": [...]}."""
    if len(questions) != len(predictions):
        raise ValueError(f"{len(questions)} questions but {len(predictions)} predictions")
    per_type, rows = {}, []
    for q, p in zip(questions, predictions):
        ok = exact_match(p, q["answer"])
        t = per_type.setdefault(q["question_type"], {"correct": 0, "count": 0})
        t["correct"] += ok
        t["count"] += 1
        rows.append({"question_id": q["question_id"], "question_type": q["question_type"],
                     "prediction": p, "answer": q["answer"], "correct": bool(ok)})
    for t in per_type.values():
        t["accuracy"] = t["correct"] / t["count"]
    correct = sum(r["correct"] for r in rows)
    return {"accuracy": correct / len(rows) if rows else 0.0, "correct": correct,
            "count": len(rows), "per_type": dict(sorted(per_type.items())),
            "predictions": rows}


def evaluate(model, tokenizer, template, processor, questions, image_folder=None,
             batch_size=8, max_new_tokens=32):
    """Exact-match accuracy of the model's greedy answers (see the module docstring);
    questions: a path or a list (load_questions)."""
    questions = load_questions(questions)
    preds = generate_answers(model, tokenizer, template, processor, questions, image_folder,
                             batch_size, max_new_tokens)
    return score(questions, preds)


def main(argv=None):
    """python -m slime_core.train.evaluate --model FOLDER --tokenizer FOLDER --questions
    FILE [--image-folder DIR] [--vision FOLDER] [--template vicuna_v1] [--out FILE]:
    prints the accuracies as JSON; --out writes every prediction (JSONL)."""
    import argparse
    import sys

    from slime_core.models.slime import SlimeModel
    from slime_core.preprocess import ImageProcessor
    from slime_core.text import Tokenizer, get_template

    p = argparse.ArgumentParser(prog="python -m slime_core.train.evaluate")
    p.add_argument("--model", required=True, help="SliME / LLaVA-layout folder")
    p.add_argument("--vision", help="vision tower folder (overrides mm_vision_tower)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: --model)")
    p.add_argument("--template", default="vicuna_v1")
    p.add_argument("--questions", required=True)
    p.add_argument("--image-folder")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out")
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    model = SlimeModel.from_pretrained(args.model, vision_tower=args.vision, device=args.device)
    tokenizer = Tokenizer.from_folder(args.tokenizer or args.model)
    tokenizer.check_fits(model.llm.embed_tokens.num_embeddings)
    processor = ImageProcessor(tile_size=model.vision_tower.config.image_size)
    result = evaluate(model, tokenizer, get_template(args.template), processor, args.questions,
                      args.image_folder, args.batch_size, args.max_new_tokens)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for row in result["predictions"]:
                f.write(json.dumps(row) + "\n")
    summary = {k: v for k, v in result.items() if k != "predictions"}
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    main()
