"""Caption metrics through pycocoevalcap (PTB tokenizer and METEOR really run on Java), checked
against small direct re-implementations of the COCO definitions written here and against values
derived by hand."""

import functools
import importlib.util
import math
import shutil
import threading
from collections import Counter

import pytest

from evals import caption
from evals.caption import METRICS, UNAVAILABLE, JavaMissing, caption_scores, score_captions
from evals.records import RecordError

# GPU machines without a package registry run the suite without pycocoevalcap (see README).
NEEDS_COCO_TOOLKIT = pytest.mark.skipif(importlib.util.find_spec("pycocoevalcap") is None or not shutil.which("java"),
                                        reason="needs pycocoevalcap and Java (the COCO caption toolkit)")

# Three images; what the PTB tokenizer must make of each caption is written beside it.
PREDICTIONS = {
    "im1": "A man's dog, running.",  # -> a man 's dog running
    "im2": "two cats sleep on a sofa",
    "im3": "A red bus!",  # -> a red bus
}
REFERENCES = {
    "im1": ["a man 's dog running", "A dog runs on the grass."],
    "im2": ["Two cats sleep on a sofa.", "a pair of cats asleep on the couch"],
    "im3": ["a red double decker bus on a street", "A bus parked by the road", "red bus"],
}
TOKENIZED_PREDICTIONS = {"im1": "a man 's dog running", "im2": "two cats sleep on a sofa", "im3": "a red bus"}
TOKENIZED_REFERENCES = {
    "im1": ["a man 's dog running", "a dog runs on the grass"],
    "im2": ["two cats sleep on a sofa", "a pair of cats asleep on the couch"],
    "im3": ["a red double decker bus on a street", "a bus parked by the road", "red bus"],
}


@pytest.fixture(scope="module", autouse=True)
def _stop_meteor_afterwards():
    yield
    caption.release()  # its JVM holds ~1 GB; the rest of the suite does not need it


def ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def direct_bleu(hyps: dict, refs: dict) -> list[float]:
    """Corpus BLEU-1..4 as the COCO toolkit defines it: clipped counts pooled over images, the
    closest reference length (shorter on ties) for the brevity penalty, 1e-15 / 1e-9 smoothing."""
    correct, guess, test_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for key, hyp in hyps.items():
        h, rs = hyp.split(), [r.split() for r in refs[key]]
        test_len += len(h)
        ref_len += min(rs, key=lambda r: (abs(len(r) - len(h)), len(r))).__len__()
        for n in range(1, 5):
            best = Counter()
            for r in rs:
                best |= ngrams(r, n)  # element-wise max over the references
            correct[n - 1] += sum(min(c, best[g]) for g, c in ngrams(h, n).items())
            guess[n - 1] += max(0, len(h) - n + 1)
    ratio = (test_len + 1e-15) / (ref_len + 1e-9)
    penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    precisions = [(c + 1e-15) / (g + 1e-9) for c, g in zip(correct, guess, strict=True)]
    return [penalty * math.prod(precisions[:n]) ** (1 / n) for n in range(1, 5)]


def direct_rouge_l(hyps: dict, refs: dict, beta: float = 1.2) -> float:
    def lcs(a, b):
        row = [0] * (len(b) + 1)
        for x in a:
            prev = row[:]
            for j, y in enumerate(b, 1):
                row[j] = prev[j - 1] + 1 if x == y else max(prev[j], row[j - 1])
        return row[-1]

    scores = []
    for key, hyp in hyps.items():
        h = hyp.split()
        p = max(lcs(h, r.split()) / len(h) for r in refs[key])
        r = max(lcs(h, r.split()) / len(r.split()) for r in refs[key])
        scores.append(0.0 if p == 0 or r == 0 else (1 + beta**2) * p * r / (r + beta**2 * p))
    return sum(scores) / len(scores)


def direct_cider_d(hyps: dict, refs: dict, sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015, as the COCO toolkit computes it): tf-idf n-gram vectors
    (raw counts × log(#images / document frequency over the references)), cosine with the
    candidate's weights clipped at the reference's, Gaussian length penalty, mean over n = 1..4
    and the references, × 10, mean over images."""
    n_images = len(refs)
    df = Counter(g for rs in refs.values() for g in {g for r in rs for n in range(1, 5) for g in ngrams(r.split(), n)})

    def vectors(sentence):
        words = sentence.split()
        idf = {g: math.log(n_images / max(1, df[g])) for n in range(1, 5) for g in ngrams(words, n)}
        return [{g: c * idf[g] for g, c in ngrams(words, n).items()} for n in range(1, 5)], len(words)

    total = 0.0
    for key, hyp in hyps.items():
        hv, hl = vectors(hyp)
        per_ref = []
        for ref in refs[key]:
            rv, rl = vectors(ref)
            sims = []
            for n in range(4):
                dot = sum(min(w, rv[n].get(g, 0.0)) * rv[n].get(g, 0.0) for g, w in hv[n].items())
                norms = math.sqrt(sum(w * w for w in hv[n].values())) * math.sqrt(sum(w * w for w in rv[n].values()))
                sims.append((dot / norms if norms else dot) * math.exp(-((hl - rl) ** 2) / (2 * sigma**2)))
            per_ref.append(sum(sims) / 4)
        total += 10 * sum(per_ref) / len(per_ref)
    return total / len(hyps)


@pytest.fixture(scope="module")
def scores():
    return score_captions(PREDICTIONS, REFERENCES)


@NEEDS_COCO_TOOLKIT
def test_bleu_rouge_cider_d_match_direct_implementations_after_ptb_tokenization(scores):
    assert list(scores) == list(METRICS)
    bleu = direct_bleu(TOKENIZED_PREDICTIONS, TOKENIZED_REFERENCES)
    assert [scores[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu, rel=1e-9)
    assert scores["ROUGE-L"] == pytest.approx(direct_rouge_l(TOKENIZED_PREDICTIONS, TOKENIZED_REFERENCES), rel=1e-9)
    assert scores["CIDEr-D"] == pytest.approx(direct_cider_d(TOKENIZED_PREDICTIONS, TOKENIZED_REFERENCES), rel=1e-9)
    # Without the PTB tokenizer (case, clitics, punctuation) these figures would differ:
    raw = direct_bleu(PREDICTIONS, {k: [r.lower() for r in v] for k, v in REFERENCES.items()})
    assert scores["BLEU-4"] != pytest.approx(raw[3], rel=1e-3)
    assert 0 < scores["METEOR"] < 1


@NEEDS_COCO_TOOLKIT
def test_bleu_of_a_short_caption_by_hand():
    """One image, 'a cat sat' against 'a cat sat on the mat': precisions 1, 1, 1 and (0 + 1e-15) /
    (0 + 1e-9) for 4-grams, brevity penalty exp(1 - 6/3); ROUGE-L: P = 1, R = 1/2."""
    got = score_captions({"x": "A cat sat."}, {"x": ["a cat sat on the mat"]})
    p = [(3 + 1e-15) / (3 + 1e-9), (2 + 1e-15) / (2 + 1e-9), (1 + 1e-15) / (1 + 1e-9), 1e-15 / 1e-9]
    penalty = math.exp(1 - (6 + 1e-9) / (3 + 1e-15))
    for n in range(1, 5):
        assert got[f"BLEU-{n}"] == pytest.approx(penalty * math.prod(p[:n]) ** (1 / n), rel=1e-12)
    assert got["BLEU-4"] == pytest.approx(math.exp(-1) * 1e-6 ** 0.25, rel=1e-6)  # small, not zero
    assert got["ROUGE-L"] == pytest.approx((1 + 1.44) * 1 * 0.5 / (0.5 + 1.44 * 1))
    assert got["CIDEr-D"] == 0.0  # one image: every n-gram's IDF is log(1/1)


@NEEDS_COCO_TOOLKIT
def test_identical_captions_score_one():
    preds = {"a": "a man rides a red bike down the street", "b": "two dogs play with a ball"}
    refs = {"a": [preds["a"], "someone on a bicycle"], "b": ["dogs playing", preds["b"]]}
    got = score_captions(preds, refs)
    for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L"):
        assert got[name] == pytest.approx(1.0, rel=1e-6), name
    assert got["CIDEr-D"] == pytest.approx(direct_cider_d(preds, refs), rel=1e-9)


@NEEDS_COCO_TOOLKIT
@pytest.mark.parametrize("prediction,reference,expected", [
    # METEOR 1.5 (en: alpha 0.85, beta 0.2, gamma 0.6): F = PR / (alpha P + (1 - alpha) R),
    # penalty = gamma (chunks / matches)^beta, score = F (1 - penalty).
    ("dog cat", "cat dog", 1 * (1 - 0.6 * (2 / 2) ** 0.2)),  # all matched, two chunks
    ("boat red car", "red car blue", 2 / 3 * (1 - 0.6 * (1 / 2) ** 0.2)),  # P = R = 2/3, one chunk of two
    ("zebra", "cat dog", 0.0),
])
def test_meteor_runs_the_java_scorer(prediction, reference, expected):
    assert score_captions({"x": prediction}, {"x": [reference]})["METEOR"] == pytest.approx(expected, rel=1e-6)


@NEEDS_COCO_TOOLKIT
def test_line_breaks_inside_a_caption_do_not_shift_later_captions():
    preds = {"x": "a red\rbus", "y": "green grass\u2028field", "z": "blue sky"}
    refs = {"x": ["a red bus"], "y": ["green grass field"], "z": ["blue sky"]}
    got = score_captions(preds, refs)
    assert got["ROUGE-L"] == pytest.approx(1.0) and got["METEOR"] == pytest.approx(1.0)


def test_ids_without_a_prediction_or_references_are_named():
    with pytest.raises(ValueError, match=r"1 id\(s\) have a prediction but no references: 'b'"):
        score_captions({"a": "x", "b": "y"}, {"a": ["x"]})
    with pytest.raises(ValueError, match=r"2 id\(s\) have references but no prediction: 'c', 'd'"):
        score_captions({"a": "x"}, {"a": ["x"], "c": ["y"], "d": ["z"]})
    with pytest.raises(ValueError, match="references of id 'a' must be a non-empty list"):
        score_captions({"a": "x"}, {"a": []})
    with pytest.raises(ValueError, match="no predictions"):
        score_captions({}, {})
    with pytest.raises(RecordError, match=r"caption records\[1\]: id '1' repeats caption records\[0\]"):
        caption_scores([{"id": 1, "prediction": "x", "references": ["x"]},
                        {"id": "1", "prediction": "y", "references": ["y"]}])


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(caption.shutil, "which", lambda name: None)
    with pytest.raises(JavaMissing, match="need Java on PATH"):
        score_captions({"a": "x"}, {"a": ["x"]})
    assert "SPICE" in UNAVAILABLE and "offline" in UNAVAILABLE["SPICE"]


def test_a_failed_meteor_call_frees_its_lock_and_starts_afresh(monkeypatch):
    class Broken:  # as Meteor.compute_score fails when its process died: lock taken, then an error
        lock = threading.Lock()

        def compute_score(self, gts, res):
            self.lock.acquire()
            raise ValueError("could not convert string to float: ''")

    broken = Broken()
    monkeypatch.setattr(caption, "_meteor", functools.lru_cache(maxsize=1)(lambda: broken))
    with pytest.raises(ValueError, match="could not convert"):
        caption._meteor_score({}, {})
    assert not broken.lock.locked() and caption._meteor.cache_info().currsize == 0
