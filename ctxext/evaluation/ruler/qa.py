"""Question answering data for RULER's qa_1 (SQuAD) and qa_2 (HotpotQA), read from the user's own files.

    qa = read_qa_file("dev-v2.0.json")      # QASet(kind="squad", ...) or kind="hotpotqa"

Nothing is downloaded: the file is the user's. Its shape decides its kind:
- SQuAD (v1.1 or v2.0): {"data": [{"paragraphs": [{"context": str, "qas": [{"question": str,
  "answers": [{"text": str}], "is_impossible": bool (v2.0)}]}]}]}. Each paragraph is a document;
  the other paragraphs of the same article are a question's first distractors (as RULER's);
  unanswerable questions are left out.
- HotpotQA (distractor setting): [{"question": str, "answer": str, "context": [[title, [sentence, ...]], ...]}]
  (a .json list or .jsonl lines). Each [title, sentences] is a document "title\\nsentences joined";
  all of a question's documents are kept in its prompt (its gold and its own distractors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...errors import CtxextError

SHAPES = (
    'SQuAD-shaped ({"data": [{"paragraphs": [{"context": ..., "qas": [{"question": ..., "answers": [{"text": ...}]}]}]}]}) '
    'or HotpotQA-shaped ([{"question": ..., "answer": ..., "context": [[title, [sentences]]]}])'
)


@dataclass(frozen=True)
class QAItem:
    question: str
    answers: tuple[str, ...]
    documents: tuple[int, ...]  # indices of the documents the prompt must hold
    related: tuple[int, ...] = ()  # first distractors (the same SQuAD article's other paragraphs)


@dataclass(frozen=True)
class QASet:
    kind: str  # "squad" or "hotpotqa"
    path: str
    items: tuple[QAItem, ...]
    documents: tuple[str, ...]


def _wrong(path: str, why: str) -> CtxextError:
    return CtxextError(f"{path} is not a QA file ({why}): give a JSON file that is {SHAPES}.")


def _load(path: str) -> object:
    file = Path(path).expanduser()
    if not file.is_file():
        raise CtxextError(f"QA file {path} not found; give a SQuAD- or HotpotQA-shaped JSON file with --qa-file.")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise _wrong(path, "it is not UTF-8 text") from None
    try:
        return json.loads(text)
    except ValueError:
        try:  # JSON lines
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            raise _wrong(path, "it is not JSON") from None


def _squad(data: dict, path: str) -> QASet:
    articles = data["data"]
    contexts = sorted({p["context"] for a in articles for p in a["paragraphs"]})
    index = {c: i for i, c in enumerate(contexts)}
    items = []
    for article in articles:
        mine = [index[p["context"]] for p in article["paragraphs"]]
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = tuple(str(a["text"]) for a in qa.get("answers", ()) if str(a["text"]).strip())
                if qa.get("is_impossible") or not answers:
                    continue
                own = index[paragraph["context"]]
                items.append(QAItem(str(qa["question"]), answers, (own,), tuple(i for i in mine if i != own)))
    return QASet("squad", path, tuple(items), tuple(contexts))


def _hotpotqa(data: list, path: str) -> QASet:
    def document(entry: list) -> str:
        title, sentences = entry
        return f"{title}\n{''.join(sentences)}"

    documents = sorted({document(entry) for item in data for entry in item["context"]})
    index = {d: i for i, d in enumerate(documents)}
    items = tuple(
        QAItem(str(item["question"]), (str(item["answer"]),), tuple(dict.fromkeys(index[document(e)] for e in item["context"])))
        for item in data
        if str(item["answer"]).strip()
    )
    return QASet("hotpotqa", path, items, tuple(documents))


def read_qa_file(path: str) -> QASet:
    """The questions and documents of a SQuAD- or HotpotQA-shaped file; CtxextError for any other shape."""
    data = _load(str(path))
    try:
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            qa = _squad(data, str(path))
        elif isinstance(data, list) and data and all(isinstance(d, dict) and {"question", "answer", "context"} <= set(d) for d in data):
            qa = _hotpotqa(data, str(path))
        else:
            raise _wrong(str(path), "neither shape")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        if isinstance(err, CtxextError):
            raise
        raise _wrong(str(path), "a field is missing or of the wrong type") from None
    if not qa.items:
        raise _wrong(str(path), "it has no answerable question")
    return qa
