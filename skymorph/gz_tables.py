"""How Galaxy Zoo's tables spell vote-count columns, and which of their columns are votes.

The schema spells an answer's count ``{question}_{answer}``. Galaxy Zoo's volunteer tables and Zoobot
spell it with hyphens (``has-spiral-arms_yes``) and, for GZ DECaLS, a campaign suffix
(``smooth-or-featured-dr5_smooth``); Galaxy Zoo 2's own table numbers tasks and answers
(``t04_spiral_a08_spiral_count``). Beside the counts they give quantities derived from them (fractions,
debiased fractions, totals), which are not votes. Every reader of labels (``train``, ``evaluate``,
``labels ingest``, ``catalog pick --exclude``) takes its vote columns from here, so that they agree.
"""

from __future__ import annotations

from types import MappingProxyType

from skymorph.schema import Schema

__all__ = ["ANSWER_DERIVED", "CAMPAIGNS", "GZ2_TABLE", "QUESTION_DERIVED", "gz2_table_name", "spellings_of", "vote_columns",
           "without_campaign"]

ANSWER_DERIVED = ("fraction", "debiased", "weight", "weighted_fraction", "flag")
"""What Galaxy Zoo's volunteer tables give beside each answer's count, ``{answer}_{derived}``: the share
of the question's volunteers, that share corrected for redshift bias, and (GZ2) the votes and share
weighted by each volunteer's consistency, and a clean-sample flag. Derived, so ignored."""
QUESTION_DERIVED = ("total_votes",)
"""Beside each question's counts: their sum, ignored (Zoobot recomputes it, as GZ DECaLS DR5's totals are
not always that sum)."""

GZ2_TABLE = MappingProxyType({
    "t01_smooth_or_features_a01_smooth": "smooth_or_featured_smooth",
    "t01_smooth_or_features_a02_features_or_disk": "smooth_or_featured_featured_or_disk",
    "t01_smooth_or_features_a03_star_or_artifact": "smooth_or_featured_artifact",
    "t02_edgeon_a04_yes": "disk_edge_on_yes",
    "t02_edgeon_a05_no": "disk_edge_on_no",
    "t03_bar_a06_bar": "bar_yes",
    "t03_bar_a07_no_bar": "bar_no",
    "t04_spiral_a08_spiral": "has_spiral_arms_yes",
    "t04_spiral_a09_no_spiral": "has_spiral_arms_no",
    "t05_bulge_prominence_a10_no_bulge": "bulge_size_no",
    "t05_bulge_prominence_a11_just_noticeable": "bulge_size_just_noticeable",
    "t05_bulge_prominence_a12_obvious": "bulge_size_obvious",
    "t05_bulge_prominence_a13_dominant": "bulge_size_dominant",
    "t06_odd_a14_yes": "something_odd_yes",
    "t06_odd_a15_no": "something_odd_no",
    "t07_rounded_a16_completely_round": "how_rounded_round",
    "t07_rounded_a17_in_between": "how_rounded_in_between",
    "t07_rounded_a18_cigar_shaped": "how_rounded_cigar",
    "t09_bulge_shape_a25_rounded": "bulge_shape_round",
    "t09_bulge_shape_a26_boxy": "bulge_shape_boxy",
    "t09_bulge_shape_a27_no_bulge": "bulge_shape_no_bulge",
    "t10_arms_winding_a28_tight": "spiral_winding_tight",
    "t10_arms_winding_a29_medium": "spiral_winding_medium",
    "t10_arms_winding_a30_loose": "spiral_winding_loose",
    "t11_arms_number_a31_1": "spiral_arm_count_1",
    "t11_arms_number_a32_2": "spiral_arm_count_2",
    "t11_arms_number_a33_3": "spiral_arm_count_3",
    "t11_arms_number_a34_4": "spiral_arm_count_4",
    "t11_arms_number_a36_more_than_4": "spiral_arm_count_more_than_4",
    "t11_arms_number_a37_cant_tell": "spiral_arm_count_cant_tell",
})
"""Galaxy Zoo 2's own table (Willett et al. 2013, as in SkyServer's zoo2MainSpecz; Hart et al. 2016):
``{task}_{answer}`` -> the answer of schema ``gz2``. Its ``_count`` column is the votes, the others
(:data:`ANSWER_DERIVED`) are derived; task 08 (the kind of odd feature) is not in the tree."""


def spellings_of(names: list[str], schema: Schema) -> dict[str, tuple[str, ...]]:
    """``{column as the schema spells it: its name(s) in the file}``, in the file's order. Galaxy Zoo's
    volunteer tables and Zoobot spell answers ``has-spiral-arms_yes`` and totals
    ``smooth-or-featured_total-votes``; a column that starts like a question of ``schema`` once its
    hyphens are underscores takes that spelling (only that: ``Bar Length (kpc)`` stays another column).
    An answer may be spelt both ways in one file (labels in the schema's spelling
    with a volunteer table's rows added): :func:`skymorph.trainer.labels.load_labels` combines the two."""
    prefixes = tuple(f"{q}_" for q in schema.question_names)
    spellings: dict[str, list[str]] = {}
    for name in names:
        ours = gz2_table_name(name) if schema.name == "gz2" else None
        if ours is None:
            ours = without_campaign(name.replace("-", "_"), schema)
            ours = ours if ours != name and ours.startswith(prefixes) else name
        spellings.setdefault(ours, []).append(name)
    return {ours: tuple(spelt) for ours, spelt in spellings.items()}


def vote_columns(names: list[str], schema: Schema) -> list[str]:
    """The columns of ``names`` that hold vote counts of ``schema``'s answers, in any spelling
    :func:`skymorph.trainer.labels.load_labels` reads (``bar_strong``, ``bar-strong``, ``bar-dr5_strong``, GZ2's
    ``t03_bar_a06_bar_count``): so that other readers of labels (``catalog pick --exclude``) see the votes
    that ``train`` sees."""
    answers = set(schema.answer_columns)
    return [name for ours, spelt in spellings_of(names, schema).items() if ours in answers for name in spelt]


CAMPAIGNS = MappingProxyType({"gz2": ("gz2",), "decals": ("dr5", "dr8")})
"""Zoobot's campaign suffixes (``smooth-or-featured-dr5_smooth``) whose tree is the built-in schema's:
GZ DECaLS DR5 and DR8 asked the decals tree; DR1/2 (``dr12``) asked another."""


def without_campaign(name: str, schema: Schema) -> str:
    """``name`` without Zoobot's campaign suffix after its question, where the campaign asked ``schema``'s
    tree (:data:`CAMPAIGNS`): ``smooth_or_featured_dr5_smooth`` -> ``smooth_or_featured_smooth``."""
    for question in schema.question_names:
        for campaign in CAMPAIGNS.get(schema.name, ()):
            if name.startswith(f"{question}_{campaign}_"):
                return f"{question}_{name[len(question) + len(campaign) + 2:]}"
    return name


def gz2_table_name(name: str) -> str | None:
    """The schema ``gz2`` name of a column of Galaxy Zoo 2's own table (:data:`GZ2_TABLE`):
    ``t04_spiral_a08_spiral_count`` -> ``has_spiral_arms_yes``, ``..._debiased`` ->
    ``has_spiral_arms_yes_debiased``; None for any other column."""
    name = name.lower()  # as the FITS release spells them
    for suffix in ("count", *ANSWER_DERIVED):
        if name.endswith(f"_{suffix}") and (answer := GZ2_TABLE.get(name[: -len(suffix) - 1])):
            return answer if suffix == "count" else f"{answer}_{suffix}"
    return None
