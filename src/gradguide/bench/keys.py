"""Run keys: the stable hash of a run's configuration that the results store finds runs by.

A key must never change for a run that computes the same thing (a grid would retrain every stored
run), so it leaves out what says where files go or how thriftily a run computes, and the options
of methods and guidance the run does not use; tests re-key every archived run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gradguide.config import to_dict
from gradguide.guidance import expand_terms, parse_guidance
from gradguide.guidance.registry import option_specs
from gradguide.methods import get_method
from gradguide.methods.base import options_scoped_out
from gradguide.train_config import NO_RESULT_FIELDS, TrainConfig

KEY_VERSION = "gradguide-bench-1"
#: Gradient-penalty runs get a revision in their key when a defect changed what they compute, so
#: a grid retrains them instead of reusing the stored run: revision 2 replays the dropout masks in
#: the finite-difference HVP and builds the pretrain prior from training passages (revision-1
#: runs trained on dropout noise on encoders, or with a prior from BoolQ's evaluation split).
PENALTY_REVISION = 2
#: No-result fields that keys hashed before they were known to change nothing: hashed at their
#: default, so that every stored key stands (the others are left out of the hash)
_HASHED_AT_DEFAULT: dict[str, Any] = {"checkpoint_every": 0, "tensorboard": False}
#: A method's options added after its runs were stored: left out of the key at their default
_NEW_METHOD_OPTIONS: dict[str, Any] = {"setfit_pooling": "default"}


def run_key(config: TrainConfig) -> str:
    """Stable key of a run: sha256 of its full configuration (minus where files go), 16 hex."""
    data = to_dict(config)
    for name in NO_RESULT_FIELDS:  # a grid resumed on a GPU keeps its CPU runs
        if name in _HASHED_AT_DEFAULT:
            data[name] = _HASHED_AT_DEFAULT[name]
        else:
            data.pop(name, None)
    if not config.cv_folds:  # runs stored before cross-validation existed keep their keys
        data.pop("cv_folds", None)
        data.pop("cv_fold", None)
    if data.get("dtype") == "fp32":  # the default weights (runs stored before it keep their keys)
        data.pop("dtype")
    # nor does which shared prefixes evaluation caches (scores equal full scoring, tested)
    data["scoring"].pop("prefix_min_tokens", None)
    default_use = get_method(config.method).default_guidance
    if config.guidance.use == default_use:
        # train() writes a method's default guidance (ofa's) into the config it records: the
        # recorded config and the grid's, which leaves it implied, are one run
        data["guidance"]["use"] = ""
    for name in options_scoped_out(config.method):  # another method's options (setfit_*)
        data["method_options"].pop(name, None)
    for name, default in _NEW_METHOD_OPTIONS.items():
        if data["method_options"].get(name) == default:
            data["method_options"].pop(name)
    if not config.layer_diagnostics:  # the diagnostics when off change nothing
        data.pop("layer_diagnostics", None)
    in_use = expand_terms(parse_guidance(config.guidance.use or default_use))
    for spec in option_specs():
        # options of guidance not in use change nothing (and runs stored before a family
        # existed keep their keys)
        used = any(t.name in in_use for t in spec.terms)
        if not used and not (spec.options_in_use and spec.options_in_use(config)):
            data["guidance"].pop(spec.options_key, None)
    if _has_active_penalty(config):
        data["guidance"]["revision"] = PENALTY_REVISION
    text = json.dumps([KEY_VERSION, data], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _has_active_penalty(config: TrainConfig) -> bool:
    """Whether the run applies a gradient penalty (SGG's HVP engine) with a non-zero weight."""
    g = config.guidance
    terms = expand_terms(parse_guidance(g.use or get_method(config.method).default_guidance))
    weights = {"dir": g.lambda_dir, "mag": g.lambda_mag, "align": g.lambda_align}
    return any(weights[t] != 0 for t in terms if t in weights)
