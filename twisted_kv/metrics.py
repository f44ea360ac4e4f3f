# -*- test-case-name: tests.test_metrics -*-
"""
Metric values and their Prometheus text exposition (format 0.0.4).
"""

from __future__ import annotations

from typing import Iterable

from attrs import field, frozen


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@frozen
class Metric:
    """
    One metric family.

    @ivar kind: C{"counter"} or C{"gauge"}.
    @ivar samples: pairs of (labels, value).
    """

    name: str
    kind: str
    help: str
    samples: tuple[tuple[tuple[tuple[str, str], ...], float], ...] = field(converter=tuple)


def sample(value: float, **labels: str) -> tuple[tuple[tuple[str, str], ...], float]:
    """
    A sample with the given labels, for L{Metric.samples}.
    """
    return tuple(sorted(labels.items())), value


def render(metrics: Iterable[Metric]) -> str:
    """
    The Prometheus text format for C{metrics}.
    """
    lines = []
    for metric in metrics:
        help_text = metric.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {metric.name} {help_text}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for labels, value in metric.samples:
            text = ",".join(f'{name}="{_escape_label(v)}"' for name, v in labels)
            rendered = repr(float(value)) if isinstance(value, float) else str(value)
            lines.append(f"{metric.name}{{{text}}} {rendered}" if text else f"{metric.name} {rendered}")
    return "\n".join(lines) + "\n"
