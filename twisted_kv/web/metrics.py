# -*- test-case-name: tests.test_metrics -*-
"""
The metrics of a node, exposed through C{prometheus_client} in the
Prometheus text format (0.0.4).

Each node has a registry of its own (L{node_registry}), so the nodes of an
in-memory cluster sharing a process keep their metrics apart.  Values are
read when C{/metrics} is scraped, not pushed as they change: a node's state
is read through L{Reading}s, and requests are counted on the hot path by
L{Counts} and L{Histogram}, which cost a dictionary lookup and a list
increment each (a C{prometheus_client} histogram's C{labels().observe()}
costs several times more, under a lock the reactor thread does not need).
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from typing import Callable, Generic, Iterable, Optional, Sequence, TypeVar

from attrs import frozen
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "EXPOSITION_TYPE",
    "LATENCY_BUCKETS",
    "Counts",
    "Histogram",
    "Metric",
    "Reading",
    "counter",
    "gauge",
    "node_registry",
    "render",
]

EXPOSITION_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

# Upper bounds, in seconds, of the request latency buckets: a loopback
# datastore answers in about a millisecond, a quorum write under load in
# tens, and a request that runs into a failover waits for seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

T = TypeVar("T")


@frozen
class Reading(Generic[T]):
    """
    A metric family whose values are read from some subject at scrape time.

    @ivar family: L{CounterMetricFamily} or L{GaugeMetricFamily}.
    @ivar name: the family's name; a counter's ends in C{_total}.
    @ivar help: what it measures, and in which unit.
    @ivar read: the value for one subject; C{bool}s count as 0 and 1.
    """

    family: Callable[..., Metric]
    name: str
    help: str
    read: Callable[[T], Optional[float]]

    def of(self, subject: T) -> Metric:
        """
        The family with one unlabelled sample, read from C{subject}.
        """
        return self.family(self.name, self.help, value=float(self.read(subject)))

    def per(self, label: str, subjects: Iterable[tuple[str, T]]) -> Metric:
        """
        The family with one sample per subject, labelled C{label} with the
        name each subject comes with; a subject whose value is C{None}
        (unknown) has none, rather than a made-up zero.
        """
        family = self.family(self.name, self.help, labels=[label])
        for name, subject in subjects:
            value = self.read(subject)
            if value is not None:
                family.add_metric([name], float(value))
        return family


def _counter_name(name: str) -> str:
    """
    C{name}, checked to end in C{_total} as a counter's does.

    @raise ValueError: it does not.
    """
    if not name.endswith("_total"):
        raise ValueError(f"a counter's name ends in _total: {name!r}")
    return name


def counter(name: str, help: str, read: Callable[[T], float]) -> Reading[T]:
    """
    A counter read at scrape time; C{name} ends in C{_total}.
    """
    return Reading(CounterMetricFamily, _counter_name(name), help, read)


def gauge(name: str, help: str, read: Callable[[T], float]) -> Reading[T]:
    """
    A gauge read at scrape time.
    """
    return Reading(GaugeMetricFamily, name, help, read)


class Counts:
    """
    A counter family counted by label values, for hot paths.  The values
    are any objects, turned into strings at scrape time.
    """

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        self._name = _counter_name(name)
        self._help = help
        self._labels = list(labels)
        self._counts: dict[tuple[object, ...], int] = {}

    def inc(self, labels: tuple[object, ...]) -> None:
        """
        Count one event with these label values.
        """
        self._counts[labels] = self._counts.get(labels, 0) + 1

    def collect(self) -> Iterable[Metric]:
        """
        The counter family, one sample per combination of label values.
        """
        family = CounterMetricFamily(self._name, self._help, labels=self._labels)
        for labels, count in sorted(self._counts.items()):
            family.add_metric([str(value) for value in labels], count)
        yield family


class Histogram:
    """
    A histogram family observed by label values, for hot paths: each
    observation increments one bucket of a plain list, and the buckets are
    made cumulative only at scrape time.  The label values are any
    objects, turned into strings at scrape time.
    """

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str],
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"bucket bounds must increase: {buckets!r}")
        self._name = name
        self._help = help
        self._labels = list(labels)
        self._bounds = tuple(buckets)
        self._les = [*map(floatToGoString, self._bounds), "+Inf"]
        # Per label values: the count in each bucket (+Inf last), then the sum.
        self._series: dict[tuple[object, ...], list[float]] = {}

    def observe(self, labels: tuple[object, ...], value: float) -> None:
        """
        Record one observation of C{value} with these label values.
        """
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0] * (len(self._bounds) + 1) + [0.0]
        series[bisect_left(self._bounds, value)] += 1
        series[-1] += value

    def collect(self) -> Iterable[Metric]:
        """
        The histogram family: cumulative buckets, count and sum for each
        combination of label values.
        """
        family = HistogramMetricFamily(self._name, self._help, labels=self._labels)
        for labels, series in sorted(self._series.items()):
            family.add_metric(
                [str(value) for value in labels],
                list(zip(self._les, accumulate(series[:-1]))),
                sum_value=series[-1],
            )
        yield family


@frozen
class _Collect:
    """
    A collector calling a function for its families.
    """

    collect: Callable[[], Iterable[Metric]]


def node_registry(
    *collectors: Collector | Callable[[], Iterable[Metric]],
) -> CollectorRegistry:
    """
    A registry of one node's metrics: the process (C{process_*}, on Linux),
    the Python platform (C{python_info}) and garbage collector
    (C{python_gc_*}), and C{collectors}.

    @param collectors: collectors, or functions returning metric families
        when the registry is scraped.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    for collector in collectors:
        registry.register(collector if hasattr(collector, "collect") else _Collect(collector))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """
    The text format of everything in C{registry}.
    """
    return generate_latest(registry)
