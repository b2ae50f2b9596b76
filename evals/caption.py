"""Caption metrics exactly as the COCO caption toolkit computes them (``pycocoevalcap``).

The pipeline of the toolkit's ``COCOEvalCap.evaluate``: references and predictions are each
lower-cased and tokenised by the Stanford PTB tokenizer (Java), punctuation tokens dropped; then

- BLEU-1..4 (Papineni et al. 2002): corpus-level, clipped n-gram precisions pooled over all
  images, geometric mean, brevity penalty against the closest reference length
  (BP = exp(1 − r/c) when c < r); the toolkit adds 1e-15/1e-9 to each precision's numerator and
  denominator, so BLEU-4 of a three-word caption is small but not zero.
- METEOR 1.5 (Denkowski & Lavie 2014; Java, ``-l en -norm``): aggregated over the corpus.
- ROUGE-L (Lin 2004): F-measure of the longest common subsequence with β = 1.2, against the best
  reference, averaged over images.
- CIDEr-D (Vedantam et al. 2015; the toolkit's "CIDEr" is this variant): per n = 1..4 the cosine
  of tf-idf n-gram vectors, the candidate's weights clipped to the reference's, times the
  length penalty exp(−(l_c − l_s)² / 2σ²) with σ = 6; averaged over n and the references, × 10,
  then over images. The IDF is log(#images / df) with df counted over the *evaluated* references,
  so scores depend on the whole set: score all predictions in one call (a single image gets 0).

SPICE is not computed: pycocoevalcap downloads Stanford CoreNLP models on its first use, which
cannot happen offline; :data:`UNAVAILABLE` says so and ``mm eval`` prints and writes that note.
"""

from __future__ import annotations

import contextlib
import functools
import io
import shutil

UNAVAILABLE = {"SPICE": "unavailable offline: pycocoevalcap downloads the Stanford CoreNLP models SPICE "
                        "needs at first use"}

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")


class JavaMissing(RuntimeError):
    """The PTB tokenizer and METEOR run on Java, which is not on PATH."""


@functools.lru_cache(maxsize=1)
def _meteor():
    """One METEOR process kept between calls: it takes seconds to load its paraphrase table."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def release() -> None:
    """Stop the METEOR process kept between calls (its JVM holds about 1 GB); the next call starts one."""
    _meteor.cache_clear()  # the last reference: Meteor.__del__ ends the process


def _meteor_score(gts: dict, res: dict) -> float:
    meteor = _meteor()
    try:
        return meteor.compute_score(gts, res)[0]
    except BaseException:
        # The process is in an unknown state and compute_score still holds its lock, which
        # Meteor.__del__ would wait on forever: free it and start a fresh process next time.
        if meteor.lock.locked():
            meteor.lock.release()
        release()
        raise


def _tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """The toolkit's PTB tokenisation. Line breaks other than the "\\n" the toolkit replaces would
    make the tokenizer emit extra lines and shift every later caption: they become spaces first."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    one_line = {k: [{"caption": " ".join(c.splitlines())} for c in caps] for k, caps in captions.items()}
    return PTBTokenizer().tokenize(one_line)


def _check_ids(predictions: dict[str, str], references: dict[str, list[str]]) -> None:
    def listed(ids: set) -> str:
        shown = sorted(map(repr, ids))
        return ", ".join(shown[:10]) + (f" and {len(shown) - 10} more" if len(shown) > 10 else "")

    if not predictions:
        raise ValueError("no predictions to score")
    if no_ref := set(predictions) - set(references):
        raise ValueError(f"{len(no_ref)} id(s) have a prediction but no references: {listed(no_ref)}")
    if no_pred := set(references) - set(predictions):
        raise ValueError(f"{len(no_pred)} id(s) have references but no prediction: {listed(no_pred)}")
    for key, refs in references.items():
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references of id {key!r} must be a non-empty list of strings, got {refs!r}")
        if not isinstance(predictions[key], str):
            raise ValueError(f"prediction of id {key!r} must be a string, got {predictions[key]!r}")


def score_captions(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (keys :data:`METRICS`) of one prediction per id
    against that id's references, on the toolkit's scale (BLEU, METEOR, ROUGE-L in [0, 1]; CIDEr-D
    in [0, 10]). Ids without a prediction or without references raise ValueError naming them;
    no Java raises :class:`JavaMissing`. SPICE: see :data:`UNAVAILABLE`."""
    _check_ids(predictions, references)
    if shutil.which("java") is None:
        raise JavaMissing("caption metrics need Java on PATH (the COCO toolkit's PTB tokenizer and METEOR run on it)")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = list(references)
    gts = _tokenize({k: references[k] for k in ids})  # two tokenizer runs, as the toolkit does
    res = _tokenize({k: [predictions[k]] for k in ids})
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print their progress
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        meteor = _meteor_score(gts, res)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    return dict(zip(METRICS, map(float, [*bleu, meteor, rouge, cider]), strict=True))


def caption_scores(records: list[dict]) -> dict[str, float]:
    """:func:`score_captions` of records ``{"id", "prediction", "references"}`` (ids as strings)."""
    from evals.records import check_records

    check_records("caption", records, source="caption records")
    return score_captions({str(r["id"]): r["prediction"] for r in records},
                          {str(r["id"]): r["references"] for r in records})
