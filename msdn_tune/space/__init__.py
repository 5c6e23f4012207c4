"""The search-space file format: one versioned YAML file per study.

A study is described by data, not code, so the same format serves `msdn-tune space validate`,
`space show`, `run` and the JSON Schema that editors use for completion. A minimal file::

    version: 1
    data: ${MSDN_DATA_ROOT:-data}/cub
    fixed: {dataset: cub}
    params:
      lr: {type: float, low: 5.0e-5, high: 5.0e-4, log: true}
      intervention: {type: categorical, choices: [none, random, shuffle]}
      lambda_causal: {type: float, low: 0.1, high: 3.0, log: true,
                      when: {intervention: [random, shuffle]}}
    num_samples: 32

Everything else has a default. Validation is strict because a typo in a study file silently
wastes hours of GPU time: unknown keys (with a "did you mean" hint), wrong types, empty ranges,
unknown metrics and trainer settings the trainer would reject are all
:class:`~msdn_tune.errors.SpaceError` naming the file and the key path.

Conditional parameters use ``when: {parent: [values]}``: the parameter exists only while every
named categorical parent is active and takes one of the listed values.

Modules, lowest first: `options` (vocabulary; sampler, scheduler, confirm, resources and
tracking sections), `document` (the file's pydantic models: the one description validation
and the schema come from), `messages` (error wording), `params` (ParamSpec, Objective),
`checks` (what a schema cannot say: against TrainConfig, conditions), `env` (${VAR}), `spec`
(StudySpec and resolution), `load` (YAML), `schema` (JSON Schema).
"""

from msdn_tune.space.load import load_space, parse_space
from msdn_tune.space.options import EPOCH_METRICS, FORMAT_VERSION, OBJECTIVE_METRICS
from msdn_tune.space.params import Objective, ParamSpec
from msdn_tune.space.schema import json_schema
from msdn_tune.space.spec import StudySpec, confirm_override

__all__ = [
    "EPOCH_METRICS",
    "FORMAT_VERSION",
    "OBJECTIVE_METRICS",
    "Objective",
    "ParamSpec",
    "StudySpec",
    "confirm_override",
    "json_schema",
    "load_space",
    "parse_space",
]
