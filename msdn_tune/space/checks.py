"""The checks a schema cannot express, run on a document the models have validated: searched
and fixed settings against TrainConfig (their kinds, their values, the trainer's own
cross-setting rules for every combination a trial can draw), conditions between parameters,
and the epochs ASHA's top rung must match.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, NoReturn

from msdn_tune.errors import ConfigError
from msdn_tune.safeload import shorten
from msdn_tune.space.document import same
from msdn_tune.space.messages import Where, describe, fail, hint, unknown
from msdn_tune.space.options import SETTING_BOUNDS
from msdn_tune.space.params import ParamSpec, categorical_assignments, dependency_order, is_member
from msdn_tune.train.config import FIELD_CHOICES, FIELD_TYPES, TrainConfig

# Enumerating every combination of categorical values to check them against TrainConfig is
# cheap (microseconds each) but exponential; past this many only the first ones are checked.
MAX_COMBINATIONS = 4096


class Checker:
    """Runs the checks for one document; every failure names the source and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: Where, message: str) -> NoReturn:
        fail(self.source, where, message)


    def param_kind(self, spec: ParamSpec, where: Where) -> None:
        """A parameter's type and values fit the setting it searches."""
        kind = FIELD_TYPES[spec.name]
        if spec.type == "categorical":
            options = FIELD_CHOICES.get(spec.name)
            for i, c in enumerate(spec.choices or ()):
                if not _fits(c, kind):
                    words = {bool: "true or false", str: "a string", int: "an integer"}
                    self.fail(
                        where + ("choices", i),
                        f"expected {words.get(kind, 'a number')} (got {describe(c)})",
                    )
                if options is not None and c not in options:
                    self.fail(where + ("choices", i), unknown(spec.name, c, options))
            return
        if kind in (bool, str):
            example = (
                "[false, true]" if kind is bool else list(FIELD_CHOICES.get(spec.name, ("...",)))
            )
            what = "a true/false" if kind is bool else "a text"
            self.fail(
                where + ("type",),
                f"{spec.name} is {what} setting; search it as type: categorical with choices: "
                f"{example}",
            )
        if kind is int and spec.type == "float":
            self.fail(where + ("type",), f"{spec.name} takes whole numbers; use type: int")

    def within_bounds(self, spec: ParamSpec, where: Where) -> None:
        """A searched integer setting stays within what it may take (options.SETTING_BOUNDS):
        the same bounds as under fixed:, which the schema states there."""
        if spec.name not in SETTING_BOUNDS:
            return
        low, high = SETTING_BOUNDS[spec.name]
        values: list[tuple[Where, Any]]
        if spec.type == "categorical":
            values = [(("choices", i), c) for i, c in enumerate(spec.choices or ())]
        else:
            values = [(("low",), spec.low), (("high",), spec.high)]
        for at, value in values:
            if isinstance(value, int) and not low <= value <= high:
                self.fail(
                    where + at,
                    f"{spec.name} must be in {low}..{high} (got {shorten(value)})",
                )

    def not_also_fixed(self, params: dict[str, ParamSpec], fixed: dict[str, Any]) -> None:
        """A setting is either fixed or searched."""
        for name in params:
            if name in fixed:
                self.fail(
                    ("params", name),
                    "also set under fixed:; a setting is either fixed or searched, not both",
                )

    def conditions(self, params: dict[str, ParamSpec], fixed: dict[str, Any]) -> None:
        """Every `when` names a searched categorical parameter and some of its choices."""
        for spec in params.values():
            for parent, values in (spec.when or {}).items():
                at: Where = ("params", spec.name, "when", parent)
                if parent == spec.name:
                    self.fail(at, "a parameter cannot depend on itself")
                if parent not in params:
                    if parent in fixed:
                        self.fail(
                            at,
                            f"{parent} is held fixed, not searched; conditions can only refer "
                            "to searched categorical parameters",
                        )
                    self.fail(
                        at,
                        f"condition on unknown parameter {parent!r}{hint(parent, params)}; "
                        f"searched parameters: {', '.join(params)}",
                    )
                target = params[parent]
                if target.type != "categorical":
                    self.fail(
                        at,
                        "conditions can only refer to categorical parameters "
                        f"({parent} is {target.type})",
                    )
                for i, v in enumerate(values):
                    if not is_member(v, target.choices or ()):
                        self.fail(
                            at + (i,),
                            f"{shorten(v)} is not one of {parent}'s choices "
                            f"{shorten(list(target.choices or ()), 200)}",
                        )
        dependency_order(
            params,
            on_cycle=lambda cycle: self.fail(
                ("params", cycle[0], "when"), f"conditions form a cycle: {' -> '.join(cycle)}"
            ),
        )

    def reachable(self, params: dict[str, ParamSpec]) -> None:
        """Reject a parameter whose chained conditions can never all hold (it would never run)."""
        parents = {parent for spec in params.values() for parent in spec.when or {}}
        order = dependency_order(params)
        gates = [params[n] for n in order if n in parents]
        combos = itertools.islice(categorical_assignments(gates, {}), MAX_COMBINATIONS + 1)
        reached: set[str] = set()
        for count, combo in enumerate(combos):
            if count == MAX_COMBINATIONS:
                return  # too many to enumerate: give the benefit of the doubt
            reached.update(name for name, spec in params.items() if spec.active(combo))
        for name in order:
            if name not in reached:
                self.fail(
                    ("params", name, "when"),
                    "this parameter can never be active: its conditions cannot all hold at once",
                )

    def against_trainer(self, fixed: dict[str, Any], params: dict[str, ParamSpec]) -> None:
        """Build the trainer config for the corners of the space; TrainConfig has the last word.

        Every combination of categorical values a trial can draw (the first few thousand, if
        there are more) is combined with all numeric parameters at their lows, then at their
        highs, so range rules and cross-setting rules are both exercised.
        """
        order = dependency_order(params)
        categorical = [params[n] for n in order if params[n].type == "categorical"]
        numeric = [params[n] for n in order if params[n].type != "categorical"]

        def combos() -> Iterator[dict[str, Any]]:
            return itertools.islice(categorical_assignments(categorical, {}), MAX_COMBINATIONS)

        def attempt(combo: dict[str, Any], end: str, pin: dict[str, Any]) -> ConfigError | None:
            values = {p.name: getattr(p, end) for p in numeric if p.active(combo)}
            try:
                TrainConfig.from_dict({**fixed, **combo, **values, **pin})
            except ConfigError as exc:
                return exc
            return None

        for combo in combos():
            for end in ("low", "high"):
                exc = attempt(combo, end, {})
                if exc is None:
                    continue
                key = str(exc).partition(": ")[0]
                value = combo[key] if key in combo else getattr(params.get(key), end, None)
                pin = {key: value} if key in params else {}
                # Name the other categorical values only when they matter, i.e. when some other
                # combination accepts the same value.
                depends = any(attempt(other, end, pin) is None for other in combos())
                self._blame(exc, fixed, params, combo, end, depends)

    def _blame(
        self,
        exc: ConfigError,
        fixed: dict[str, Any],
        params: dict[str, ParamSpec],
        combo: dict[str, Any],
        end: str,
        depends: bool,
    ) -> NoReturn:
        message = str(exc)
        key, _, rest = message.partition(": ")
        context = {k: v for k, v in combo.items() if k != key} if depends else {}
        suffix = ""
        if context:
            shown = ", ".join(f"{k}={shorten(v)}" for k, v in context.items())
            advice = f"; make {key} conditional with `when:`" if key in params else ""
            suffix = f" (with {shown}{advice})"
        if key in params:
            spec = params[key]
            if spec.type == "categorical":
                i = next(i for i, c in enumerate(spec.choices or ()) if same(c, combo[key]))
                self.fail(("params", key, "choices", i), f"rejected by the trainer: {rest}{suffix}")
            self.fail(("params", key, end), f"rejected by the trainer: {rest}{suffix}")
        if key in fixed:
            self.fail(("fixed", key), f"{rest}{suffix}")
        self.fail(("params",), f"the trainer rejects a combination: {message}{suffix}")


def _fits(value: Any, kind: type) -> bool:
    """Whether a categorical choice has the setting's type (true is not a number here)."""
    if kind is bool or kind is str:
        return isinstance(value, kind)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind is int else isinstance(value, int | float)


def max_epochs(fixed: dict[str, Any], params: dict[str, ParamSpec]) -> int:
    """The most epochs any trial can run: fixed, searched, or the dataset's published default."""
    if "epochs" in params:
        spec = params["epochs"]
        if spec.type == "categorical":
            return int(max(spec.choices or (1,)))
        return int(spec.high or 1)
    if "epochs" in fixed:
        return int(fixed["epochs"])
    return TrainConfig.for_dataset(str(fixed["dataset"])).epochs
