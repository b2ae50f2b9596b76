"""Answer normalisation of the official VQA evaluation (VQA v1/v2, ``vqaEval.py``).

We follow the GT-Vision-Lab/VQA script as of commit 14a5e12 (2015-09-30): the version whose
contraction table maps most targets to the typographic apostrophe ’ (U+2019). Its later
revisions differ: 458a8b2 (2016-10) switched the targets to the ASCII apostrophe, and a013f00
(2021-03) normalises ground truths fully and the prediction only when the ground truths
disagree. LLaVA and lmms-eval use yet another variant (EvalAI's processor, which also strips
the prediction's and every answer's punctuation). Numbers from these variants differ slightly.

Two steps, applied in this order to the prediction (and the first alone to ground truths, and
only when the ten ground truths are not all the same string; see :mod:`evals.vqa`):

1. :func:`process_punctuation` — each character of ``PUNCTUATION`` is deleted when it touches a
   space in the original text (or the text has a digit-comma-digit anywhere), else replaced by a
   space; then every ``.`` not followed by a digit is deleted (at most 32 of them: the official
   call passes ``re.UNICODE``, which is 32, in the ``count`` position).
2. :func:`process_digit_article` — lower-case, split on whitespace, number words ``none``…``ten``
   to digits, drop the articles a/an/the, restore contractions (``dont`` → ``don’t``), join with
   single spaces.

The ASCII apostrophe is not in ``PUNCTUATION``: ``don't`` stays ``don't`` and never equals the
``don’t`` that ``dont`` becomes. That is the official behaviour, kept on purpose.
"""

from __future__ import annotations

import re

# Deleted or replaced by a space (step 1). Not in the list: . (handled apart), ' : and the letters.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}

ARTICLES = frozenset({"a", "an", "the"})

NUM_ANSWERS = 10  # human answers per question in VQA v1/v2 (also VizWiz, TextVQA, OK-VQA)

# The official contraction table, written as `word>replacement` pairs. Its targets mix the ASCII
# apostrophe (the first five, we've, where's, who've) with the typographic ’ (the rest); a few
# entries map the other way (somebody’d>somebodyd), and the capitalised ones (Im, Ive, Id’ve,
# I’dve) never fire because words are lower-cased first. All kept as the official script has them.
_CONTRACTION_PAIRS = """
aint>ain't arent>aren't cant>can't couldve>could've couldnt>couldn't couldn'tve>couldn’t’ve
couldnt’ve>couldn’t’ve didnt>didn’t doesnt>doesn’t dont>don’t hadnt>hadn’t hadnt’ve>hadn’t’ve
hadn'tve>hadn’t’ve hasnt>hasn’t havent>haven’t hed>he’d hed’ve>he’d’ve he’dve>he’d’ve hes>he’s
howd>how’d howll>how’ll hows>how’s Id’ve>I’d’ve I’dve>I’d’ve Im>I’m Ive>I’ve isnt>isn’t itd>it’d
itd’ve>it’d’ve it’dve>it’d’ve itll>it’ll let’s>let’s maam>ma’am mightnt>mightn’t
mightnt’ve>mightn’t’ve mightn’tve>mightn’t’ve mightve>might’ve mustnt>mustn’t mustve>must’ve
neednt>needn’t notve>not’ve oclock>o’clock oughtnt>oughtn’t ow’s’at>’ow’s’at ’ows’at>’ow’s’at
’ow’sat>’ow’s’at shant>shan’t shed’ve>she’d’ve she’dve>she’d’ve she’s>she’s shouldve>should’ve
shouldnt>shouldn’t shouldnt’ve>shouldn’t’ve shouldn’tve>shouldn’t’ve somebody’d>somebodyd
somebodyd’ve>somebody’d’ve somebody’dve>somebody’d’ve somebodyll>somebody’ll somebodys>somebody’s
someoned>someone’d someoned’ve>someone’d’ve someone’dve>someone’d’ve someonell>someone’ll
someones>someone’s somethingd>something’d somethingd’ve>something’d’ve something’dve>something’d’ve
somethingll>something’ll thats>that’s thered>there’d thered’ve>there’d’ve there’dve>there’d’ve
therere>there’re theres>there’s theyd>they’d theyd’ve>they’d’ve they’dve>they’d’ve theyll>they’ll
theyre>they’re theyve>they’ve twas>’twas wasnt>wasn’t wed’ve>we’d’ve we’dve>we’d’ve weve>we've
werent>weren’t whatll>what’ll whatre>what’re whats>what’s whatve>what’ve whens>when’s whered>where’d
wheres>where's whereve>where’ve whod>who’d whod’ve>who’d’ve who’dve>who’d’ve wholl>who’ll whos>who’s
whove>who've whyll>why’ll whyre>why’re whys>why’s wont>won’t wouldve>would’ve wouldnt>wouldn’t
wouldnt’ve>wouldn’t’ve wouldn’tve>wouldn’t’ve yall>y’all yall’ll>y’all’ll y’allll>y’all’ll
yall’d’ve>y’all’d’ve y’alld’ve>y’all’d’ve y’all’dve>y’all’d’ve youd>you’d youd’ve>you’d’ve
you’dve>you’d’ve youll>you’ll youre>you’re youve>you’ve
"""
CONTRACTIONS = dict(pair.split(">") for pair in _CONTRACTION_PAIRS.split())

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its "(?!<=" is a typo for a lookbehind and, being a
# lookahead at a ".", always holds, so it means exactly this.
_PERIOD = re.compile(r"\.(?!\d)")
_OFFICIAL_PERIOD_COUNT = 32  # re.UNICODE in the count position of the official .sub() call


def process_punctuation(text: str) -> str:
    """Step 1 of the official normalisation (see the module docstring)."""
    strip = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in PUNCTUATION:
        # The test reads the original text, the replacement acts on the text so far (as official).
        out = out.replace(p, "" if strip or p + " " in text or " " + p in text else " ")
    return _PERIOD.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Step 2 of the official normalisation: lower-case, number words to digits, no articles,
    contractions restored, words joined by single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_prediction(answer: str) -> str:
    """A predicted answer as the official script compares it: newlines and tabs to spaces,
    stripped, then :func:`process_punctuation` and :func:`process_digit_article`."""
    return process_digit_article(process_punctuation(answer.replace("\n", " ").replace("\t", " ").strip()))
