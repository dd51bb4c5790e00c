"""Yes/no answers (coin flip, StrategyQA, BBH causal judgement, navigate, sports, web of lies).

The closed-label ``exact`` scorer with the labels ``yes`` / ``no``: strict takes the first of them in
the marked answer span ("The answer is yes", ``**No**``, a bare ``Yes.``), lenient the last one
anywhere in the response. Case is ignored, so BBH's ``Yes`` and Kojima's ``yes`` both work.
"""

from __future__ import annotations

from . import register_scorer
from .exact import ExactScorer


@register_scorer("yesno")
class YesNoScorer(ExactScorer):
    default_labels = ("yes", "no")
