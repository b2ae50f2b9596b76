"""Official VQA accuracy on tricky answers. Every expected value is derived by hand from the
official definition (GT-Vision-Lab/VQA vqaEval.py, the 2015-09-30 revision; see evals/vqa_answers.py):
acc = mean over the ten answers i of min(1, #{j != i : g_j = p} / 3)."""

import pytest

from evals.records import RecordError
from evals.vqa import question_accuracy, vqa_scores
from evals.vqa_answers import normalize_prediction, process_punctuation


def ten(*groups):
    """ten(("2", 3), ("3", 7)) -> ["2", "2", "2", "3", ...]: the ten human answers."""
    answers = [a for a, n in groups for _ in range(n)]
    assert len(answers) == 10
    return answers


CASES = [
    # numbers as words: only the prediction is normalised (the answers only when they disagree,
    # and then by punctuation alone), so "two" matches "2" and "2" never matches "two"
    ("two", ten(("2", 10)), 1.0),
    ("2", ten(("two", 10)), 0.0),
    ("Two dogs", ten(("2 dogs", 10)), 1.0),
    ("none", ten(("0", 10)), 1.0),
    ("eleven", ten(("11", 10)), 0.0),  # the map stops at ten
    ("two", ten(("2", 2), ("two", 8)), 0.6),  # "2" twice: left out 1/3 (x2), else 2/3 (x8)
    # articles and case
    ("a dog", ten(("dog", 10)), 1.0),
    ("The Dog", ten(("dog", 10)), 1.0),
    ("dog", ten(("the dog", 10)), 0.0),
    ("an apple", ten(("apple", 3), ("apples", 7)), 0.9),
    # punctuation
    ("yes.", ten(("yes", 10)), 1.0),
    ("Yes!", ten(("yes", 10)), 1.0),
    (" yes\n", ten(("yes", 10)), 1.0),
    ("3.5", ten(("3.5", 10)), 1.0),  # a period before a digit stays
    ("1,000", ten(("1000", 10)), 1.0),  # digit-comma-digit: punctuation deleted, not spaced
    ("red,white", ten(("red white", 10)), 1.0),  # comma touching no space: becomes a space
    ("red, white", ten(("red white", 10)), 1.0),  # comma touching a space: deleted
    ("t-shirt", ten(("t-shirt", 10)), 0.0),  # answers all agree: left as is, prediction is "t shirt"
    ("t-shirt", ten(("t-shirt", 9), ("shirt", 1)), 1.0),  # they disagree: answers become "t shirt"
    ("." * 20 + "yes", ten(("yes", 10)), 1.0),
    ("." * 40 + "yes", ten(("yes", 10)), 0.0),  # the official call deletes at most 32 periods
    # contractions: the official targets mostly use the typographic apostrophe U+2019
    ("dont", ten(("don’t", 10)), 1.0),
    ("dont", ten(("don't", 10)), 0.0),
    ("don't", ten(("don't", 10)), 1.0),  # the ASCII apostrophe is not punctuation there
    ("isnt", ten(("isn’t", 10)), 1.0),
    ("isnt", ten(("isn't", 10)), 0.0),
    ("weve", ten(("we've", 10)), 1.0),  # one of the few ASCII targets
    ("Whats", ten(("what’s", 10)), 1.0),
    # repeated identical answers: leaving one out removes exactly one of them
    ("2", ten(("2", 3), ("3", 7)), 0.9),  # 3 x 2/3 + 7 x 1; dropping all equal strings would give 0.7
    ("2", ten(("2", 1), ("3", 9)), 0.3),  # 1 x 0 + 9 x 1/3
    ("2", ten(("2", 4), ("3", 6)), 1.0),
    ("cat", ten(("dog", 10)), 0.0),
]


@pytest.mark.parametrize("prediction,answers,expected", CASES)
def test_question_accuracy_reproduces_the_official_value(prediction, answers, expected):
    assert question_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_normalisation_steps():
    assert normalize_prediction("  The TWO dogs, don't (yes)?\t") == "2 dogs don't yes"
    assert normalize_prediction("Im the one") == "im 1"  # the table's capitalised keys never fire
    assert process_punctuation("the dog.") == "the dog"  # no lower-casing, no articles in step 1
    assert process_punctuation("a/b") == "a b" and process_punctuation("a / b") == "a  b"


def test_overall_and_per_answer_type():
    records = [
        {"id": 1, "prediction": "yes", "answers": ten(("yes", 10)), "answer_type": "yes/no"},  # 1
        {"id": 2, "prediction": "2", "answers": ten(("3", 7), ("2", 3)), "answer_type": "number"},  # 0.9
        {"id": 3, "prediction": "no", "answers": ten(("yes", 10)), "answer_type": "yes/no"},  # 0
        {"id": "q4", "prediction": "red", "answers": ten(("red", 2), ("blue", 8))},  # 0.6, no type
    ]
    scores = vqa_scores(records)
    assert scores["accuracy"] == pytest.approx(100 * (1 + 0.9 + 0 + 0.6) / 4)
    # Per type from the per-question accuracy (number: 90, not the last leave-one-out value 66.7).
    assert scores["per_answer_type"] == pytest.approx({"number": 90.0, "yes/no": 50.0})
    assert scores["questions"] == 4 and scores["questions_per_answer_type"] == {"number": 1, "yes/no": 2}


@pytest.mark.parametrize("record,message", [
    ({"id": 1, "prediction": "2", "answers": ["2"] * 9}, "'answers' must hold 10 strings, got 9"),
    ({"id": 1, "answers": ["2"] * 10}, "'prediction' must be a string, got None"),
    ({"id": 1, "prediction": "2", "answers": ["2"] * 9 + [2]}, "'answers' must be a non-empty list of strings"),
    ({"prediction": "2", "answers": ["2"] * 10}, "no 'id'"),
])
def test_bad_records_are_named(record, message):
    with pytest.raises(RecordError, match="VQA records\\[1\\]: " + message.replace("[", "\\[").replace("(", "\\(")):
        vqa_scores([{"id": 0, "prediction": "x", "answers": ["x"] * 10}, record])
    with pytest.raises(ValueError, match="want 10 human answers"):
        question_accuracy("2", ["2"] * 9)
