"""VQA accuracy, the official definition (VQA v1/v2 ``vqaEval.py``; normalisation in
:mod:`evals.vqa_answers`, which says which revision of the official script we follow).

For a question with human answers g_1..g_10 and the normalised prediction p:

    acc = 1/10 · Σ_i min(1, #{j ≠ i : g_j = p} / 3)

leave-one-out over the ten answers: leaving out answer i removes that one answer even when others
are the same string (they are distinct records). The ground truths are compared as given, except
that when they are not all the same string each goes through the punctuation step only (no
lower-casing, no digits, no articles: the official script does exactly this, so a prediction
"2" never matches ten answers "two", while "two" matches ten answers "2").

Overall accuracy is the mean of the per-question accuracies, in percent (the official script
rounds it to two decimals; we keep full precision). Per answer type we average the same
per-question accuracies over the questions of that type. (The first official releases, before
2015-09-24, averaged each question's *last* leave-one-out value there instead; the version we
follow, and later ones, average the per-question accuracy as we do.)
"""

from __future__ import annotations

from collections import defaultdict

from evals.records import check_records
from evals.vqa_answers import NUM_ANSWERS, normalize_prediction, process_punctuation


def question_accuracy(prediction: str, answers: list[str]) -> float:
    """Official accuracy in [0, 1] of one prediction against the human answers of one question."""
    if len(answers) != NUM_ANSWERS:
        raise ValueError(f"want {NUM_ANSWERS} human answers per question, got {len(answers)}: {answers!r}")
    pred = normalize_prediction(prediction)
    truths = [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    matches = sum(t == pred for t in truths)
    # Leaving out answer i leaves matches - [truth_i == pred] matches among the other nine.
    return sum(min(1.0, (matches - (t == pred)) / 3) for t in truths) / len(truths)


def vqa_scores(records: list[dict]) -> dict:
    """Official VQA accuracy of records ``{"id", "prediction", "answers": [10 str], "answer_type"?}``.

    Returns ``{"accuracy": percent, "per_answer_type": {type: percent}, "questions": n,
    "questions_per_answer_type": {type: n}}``; percentages over questions, per type from the
    per-question accuracy (records without an ``answer_type`` count only in the overall figure).
    Raises ValueError (RecordError) naming the record that is not in the VQA line format.
    """
    check_records("vqa", records, source="VQA records")
    total = 0.0
    by_type: dict[str, list[float]] = defaultdict(list)
    for record in records:
        acc = question_accuracy(record["prediction"], record["answers"])
        total += acc
        if record.get("answer_type") is not None:
            by_type[str(record["answer_type"])].append(acc)
    return {
        "accuracy": 100.0 * total / len(records),
        "per_answer_type": {t: 100.0 * sum(accs) / len(accs) for t, accs in sorted(by_type.items())},
        "questions": len(records),
        "questions_per_answer_type": {t: len(accs) for t, accs in sorted(by_type.items())},
    }
