"""Searched parameters and objectives of a study, and the order Optuna must suggest them in."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from msdn_tune.errors import SpaceError
from msdn_tune.space.document import same


@dataclass(frozen=True)
class ParamSpec:
    """One searched trainer setting.

    `low`/`high`/`log`/`step` describe float and int parameters, `choices` categorical ones.
    `when` maps a categorical parent parameter to the values for which this one exists.
    """

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None
    when: dict[str, tuple[Any, ...]] | None = None

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether this parameter exists given the values suggested so far for its parents."""
        return all(
            parent in values and is_member(values[parent], allowed)
            for parent, allowed in (self.when or {}).items()
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of this parameter."""
        out: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            out["choices"] = list(self.choices or ())
        else:
            out.update(low=self.low, high=self.high, log=self.log, step=self.step)
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        return out


@dataclass(frozen=True)
class Objective:
    """One metric to optimise, and its direction."""

    metric: str
    mode: str = "max"


def is_member(value: Any, options: tuple[Any, ...] | list[Any]) -> bool:
    """`value in options`, keeping true apart from 1."""
    return any(same(value, o) for o in options)


def dependency_order(
    params: dict[str, ParamSpec], on_cycle: Callable[[list[str]], None] | None = None
) -> tuple[str, ...]:
    """Topological order of `when` dependencies, stable with respect to file order."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(name: str, stack: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = stack[stack.index(name) :] + [name]
            if on_cycle is not None:
                on_cycle(cycle)
            raise SpaceError(f"conditions form a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for parent in params[name].when or {}:
            if parent in params:
                visit(parent, stack + [name])
        state[name] = 2
        order.append(name)

    for name in params:
        visit(name, [])
    return tuple(order)


def categorical_assignments(
    cats: list[ParamSpec], values: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Every assignment of the categorical parameters a trial can draw (inactive ones absent)."""
    if not cats:
        yield dict(values)
        return
    head, rest = cats[0], cats[1:]
    if not head.active(values):
        yield from categorical_assignments(rest, values)
        return
    for choice in head.choices or ():
        yield from categorical_assignments(rest, {**values, head.name: choice})
