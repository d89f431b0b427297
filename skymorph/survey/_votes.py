"""Simulated Galaxy Zoo volunteers: true vote fractions from morphology, then votes down the tree.

Each answer's true vote fraction follows the galaxy's parameters (smooth vs featured from its bulge
fraction, arms and bar; edge-on from its axis ratio; bar, arm count and winding from the bar and arm
parameters; bulge size from the bulge fraction; roundness from the axis ratio; mergers from a
companion), and is pulled towards the uniform answer when the feature is hard to see:

.. math::

    f_a = v\\,w_a / \\textstyle\\sum_{a'} w_{a'} + (1 - v) / K

with :math:`w_a` the answer's weight from the parameters, K the question's number of answers and
:math:`v \\in [0, 1]` the question's visibility, which falls with signal-to-noise and size, and for
features of the disk's face (arms, bar, bulge) with inclination. A question this module does not know,
or whose answers it does not know (a custom schema), gets the uniform fractions.

Votes: every galaxy gets :math:`N \\sim \\max(1, \\mathrm{Poisson}(n))` volunteers. A root question's
answers are a multinomial draw of all N; a question asked by answer a of its parent gets exactly the
volunteers who gave a, so the counts respect the decision tree as real Galaxy Zoo votes do.
"""

from __future__ import annotations

import numpy as np

from skymorph.schema import Schema
from skymorph.survey._galaxy import GalaxyParams

__all__ = ["true_vote_fractions", "simulate_votes"]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _near(value, centre, width):
    """Gaussian weight of ``value`` around an answer's ``centre``."""
    return np.exp(-0.5 * ((value - centre) / width) ** 2)


def _visibility(p: GalaxyParams) -> dict[str, np.ndarray]:
    """How well a volunteer can see: overall shape, fine detail, and detail on the disk's face."""
    shape = _sigmoid((np.log(p.snr) - np.log(8.0)) / 0.4) * _sigmoid((p.size_arcsec - 1.0) / 0.3)
    detail = _sigmoid((np.log(p.snr) - np.log(25.0)) / 0.5) * _sigmoid((p.size_arcsec - 2.0) / 0.5)
    face_on = np.clip((p.axis_ratio - 0.25) / 0.35, 0.0, 1.0)
    return {"shape": shape, "detail": detail, "face": detail * face_on}


def _smooth_or_featured(p):
    score = (1 - p.bulge_fraction) + 0.3 * p.arm_amplitude + 0.2 * p.bar_strength
    featured = _sigmoid((score - 0.5) / 0.08)
    return {"smooth": 0.98 * (1 - featured), "featured_or_disk": 0.98 * featured, "artifact": np.full(len(p), 0.02)}, "detail"


def _disk_edge_on(p):
    yes = _sigmoid((0.3 - p.axis_ratio) / 0.04)
    return {"yes": yes, "no": 1 - yes}, "shape"


def _has_spiral_arms(p):
    yes = np.where(p.arm_count > 0, _sigmoid((p.arm_amplitude - 0.25) / 0.08), 0.03)
    return {"yes": yes, "no": 1 - yes}, "face"


def _bar(p):
    b = p.bar_strength
    strong, weak = _near(b, 0.8, 0.15), _near(b, 0.4, 0.15)
    return {"strong": strong, "weak": weak, "yes": strong + weak, "no": _near(b, 0.0, 0.12)}, "face"


def _bulge_size(p):
    bf = p.bulge_fraction
    centres = {
        "none": 0.0, "small": 0.1, "moderate": 0.25, "large": 0.4, "dominant": 0.6,  # GZ DECaLS
        "no": 0.0, "just_noticeable": 0.12, "obvious": 0.3,  # GZ2 ("dominant" shared)
    }
    return {answer: _near(bf, centre, 0.08) for answer, centre in centres.items()}, "face"


def _how_rounded(p):
    q = p.axis_ratio
    cigar = _near(q, 0.3, 0.12)
    return {"round": _near(q, 0.9, 0.12), "in_between": _near(q, 0.6, 0.12), "cigar": cigar, "cigar_shaped": cigar}, "shape"


def _edge_on_bulge(p):
    boxy = _sigmoid((p.bar_strength - 0.4) / 0.1)  # boxy/peanut bulges are bars seen edge-on
    has_bulge = _sigmoid((p.bulge_fraction - 0.08) / 0.03)
    rounded, none = has_bulge * (1 - boxy), (1 - has_bulge) * (1 - boxy)
    return {"boxy": boxy, "rounded": rounded, "round": rounded, "none": none, "no_bulge": none}, "detail"


def _spiral_winding(p):
    pitch = p.arm_pitch_deg
    return {"tight": _near(pitch, 10, 5), "medium": _near(pitch, 20, 5), "loose": _near(pitch, 32, 5)}, "face"


def _spiral_arm_count(p):
    m = p.arm_count
    weights = {str(k): _near(m, k, 0.5) for k in range(1, 5)}
    weights["more_than_4"] = _near(m, 5, 0.5)
    weights["cant_tell"] = np.full(len(p), 0.05)
    return weights, "face"


def _merging(p):
    c = p.companion_flux_ratio
    has = c > 0
    major = _sigmoid((c - 0.3) / 0.08)
    close = _sigmoid((2.2 - p.companion_separation) / 0.3)
    return {
        "none": np.where(has, 0.05, 1.0),
        "minor_disturbance": np.where(has, 1 - major, 0.01),
        "major_disturbance": np.where(has, major * (1 - close), 0.01),
        "merger": np.where(has, major * close, 0.01),
    }, "shape"


def _something_odd(p):
    yes = np.where(p.companion_flux_ratio > 0, 0.8, 0.05)
    return {"yes": yes, "no": 1 - yes}, "shape"


_QUESTIONS = {
    "smooth_or_featured": _smooth_or_featured,
    "disk_edge_on": _disk_edge_on,
    "has_spiral_arms": _has_spiral_arms,
    "bar": _bar,
    "bulge_size": _bulge_size,
    "how_rounded": _how_rounded,
    "edge_on_bulge": _edge_on_bulge,
    "bulge_shape": _edge_on_bulge,
    "spiral_winding": _spiral_winding,
    "spiral_arm_count": _spiral_arm_count,
    "merging": _merging,
    "something_odd": _something_odd,
}


def true_vote_fractions(p: GalaxyParams, schema: Schema) -> np.ndarray:
    """(B, A) float64: each galaxy's true vote fraction per answer; each question's answers sum to 1."""
    visibility = _visibility(p)
    out = np.empty((len(p), schema.n_answers))
    for q, cols in zip(schema.questions, schema.question_slices):
        k = len(q.answers)
        known = _QUESTIONS.get(q.name)
        weights, kind = known(p) if known else ({}, None)
        if not all(a in weights for a in q.answers):
            out[:, cols] = 1.0 / k
            continue
        w = np.stack([np.broadcast_to(weights[a], (len(p),)) for a in q.answers], axis=1)
        w = w / w.sum(axis=1, keepdims=True)
        v = visibility[kind][:, None]
        out[:, cols] = v * w + (1 - v) / k
    return out


def simulate_votes(
    fractions: np.ndarray, schema: Schema, n_volunteers: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(counts int32 (B, A), total int32 (B,))``: votes drawn down the decision tree.

    ``total`` volunteers per galaxy, :math:`\\max(1, \\mathrm{Poisson}(n))`; root questions share all
    of them, a child question's count is its parent answer's count (see the module docstring).
    """
    b = fractions.shape[0]
    total = np.maximum(1, rng.poisson(n_volunteers, size=b)).astype(np.int64)
    counts = np.zeros((b, schema.n_answers), dtype=np.int64)
    # parents before children: a question's depth is the length of its ancestry
    order = sorted(range(len(schema.questions)), key=lambda i: len(schema.ancestry[i]))
    for i in order:
        q, cols = schema.questions[i], schema.question_slices[i]
        asked = total if q.asked_by is None else counts[:, schema.answer_index(*q.asked_by)]
        pvals = fractions[:, cols] / fractions[:, cols].sum(axis=1, keepdims=True)
        counts[:, cols] = rng.multinomial(asked, pvals)
    return counts.astype(np.int32), total.astype(np.int32)
